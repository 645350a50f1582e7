-- dlq_replay: move the named dead letters back to their ready stream.
-- Touches: {wf:Q}:dlq (ZREM), {wf:Q}:dlq:data (HDEL), {wf:Q}:env (the record's envelope, or the
--          exact bytes of its envelope_base64), {wf:Q}:state ("prio|a|d|0"),
--          {wf:Q}:history (restored), {wf:Q}:ready:<prio> (XADD), {wf:Q}:counters (replayed).
-- ARGV: reset attempts 1|0, then the job ids (the caller reads the oldest ones from the DLQ
--       first). Always by id, so a call redis-py sends again after its reply was lost is a
--       no-op for the ids the first one replayed (their records are gone): picking "the oldest
--       n" in here made the re-send replay n more than asked.
-- Returns: {ids left in the DLQ (their job is live again), {replayed job ids}}; an id no longer
-- in the DLQ (replayed by a call whose reply was lost, or purged) is neither. Lost
-- deliveries always restart at 0: replay is a human decision. An id that is live again is
-- skipped (it stays in the DLQ).
-- The exact bytes of an envelope that was not UTF-8 (kept as base64 by dlq_insert).
local function b64_decode(s)
  local val = {}
  for k = 1, 64 do val[string.byte(B64, k)] = k - 1 end
  s = string.gsub(s, '[^%w%+/]', '')
  local out = {}
  for i = 1, #s, 4 do
    local a, b, c, d = string.byte(s, i, i + 3)
    local n = val[a] * 262144 + val[b] * 4096 + (c and val[c] or 0) * 64 + (d and val[d] or 0)
    local bytes = string.char(math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
    out[#out + 1] = string.sub(bytes, 1, (c and (d and 3 or 2)) or 1)
  end
  return table.concat(out)
end

local reset = ARGV[1] == '1'
local out = {}
local left = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = dec(redis.call('HGET', K_DLQDATA, id))
  -- a job id that is live again (re-enqueued meanwhile) stays in the DLQ: never two copies
  if rec and redis.call('HEXISTS', K_ENV, id) == 0 then
    local env = rec.envelope or ''
    if type(rec.envelope_base64) == 'string' then env = b64_decode(rec.envelope_base64) end
    local prio = rec.priority
    if not K_READY[prio] then prio = 'normal' end
    local st = {p = prio, a = reset and 0 or math.floor(tonumber(rec.attempts) or 0),
                d = math.floor(tonumber(rec.deliveries) or 0), l = 0}
    redis.call('XADD', K_READY[prio], '*', 'j', id)
    redis.call('HSET', K_ENV, id, env)
    redis.call('HSET', K_STATE, id, st_put(st))
    if type(rec.history) == 'table' and rec.history[1] ~= nil then
      redis.call('HSET', K_HIST, id, cjson.encode(rec.history))
    end
    redis.call('ZREM', K_DLQ, id)
    redis.call('HDEL', K_DLQDATA, id)
    out[#out + 1] = id
  elseif redis.call('ZSCORE', K_DLQ, id) then
    left = left + 1  -- stays: live again, or a record that does not parse
  end
end
if #out > 0 then redis.call('HINCRBY', K_COUNTERS, 'replayed', #out) end
return {left, out}
