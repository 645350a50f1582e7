#!lua flags=allow-oom
-- ratelimit: take up to n tokens from a token bucket shared by every worker of a queue.
-- Touches: KEYS[16] (a {wf:Q}:ratelimit hash: tokens, ts).
-- ARGV: capacity (jobs), per ms, n wanted.
-- Returns: {granted, ms until the next token (0 when all were granted)}.
local now = now_ms()
local cap, per, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, rate = bucket_peek(KEYS[16], cap, per, now)
local granted = math.min(want, math.floor(tokens))
bucket_take(KEYS[16], tokens, granted, now, per)
local wait = 0
if granted < want then wait = math.ceil((1 - (tokens - granted)) / rate) end
return {granted, wait}
