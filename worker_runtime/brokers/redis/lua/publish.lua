#!lua
-- publish: fan an event out to every current subscription of its topic, in one atomic step.
-- The bare '#!lua' (flags, but not allow-oom): a full Redis refuses the whole publish before
-- it runs. Without it Redis checked only the first write, here mostly the trim that forgets old
-- event ids, so a publish was stored in every subscription past maxmemory.
-- Runs WITHOUT the prelude (its KEYS layout is not a single queue's). Key schema
-- (worker_runtime/brokers/redis/keys.py):
--   KEYS[1]            {wft:T}:subscriptions  set of groups G subscribed to topic T
--   then per subscription i (queue Q = T:G_i, in ARGV order), 5 keys:
--   KEYS[1+5(i-1)+1]   {wf:Q}:ready:normal    stream; XADD field j = job id
--   KEYS[1+5(i-1)+2]   {wf:Q}:env             hash job id -> envelope JSON (HSETNX)
--   KEYS[1+5(i-1)+3]   {wf:Q}:state           hash job id -> "normal|0|0|0"
--   KEYS[1+5(i-1)+4]   {wf:Q}:counters        hash, field enqueued += 1
--   KEYS[1+5(i-1)+5]   {wf:Q}:enqueued        zset job id -> enqueue ms (dedup window)
-- ARGV[1]: job id (the event id, the same in every queue); ARGV[2]: dedup window ms;
-- ARGV[3]: n, the number of subscriptions the caller read; ARGV[3+i]: group i (distinct;
--          the caller sorts them, the script compares them with the set as a set);
-- ARGV[3+n+i]: the envelope JSON for subscription i.
-- Returns {'stale', groups...} when the registered groups differ from the caller's list (it
-- reads them again and retries: nothing was written), else {'ok', created flag per group}.
-- All checks happen before the first write, so a script error never leaves a partial fan-out;
-- a client killed at any point leaves the script either run entirely or not at all.
local members = redis.call('SMEMBERS', KEYS[1])
local n = tonumber(ARGV[3])
-- Compared as sets, never by sorting here: Lua orders strings with strcoll, and Redis sets
-- LC_COLLATE from its environment, so under e.g. en_US.UTF-8 "audit" sorts before "Billing"
-- while the caller sorted by code point, and every publish to that topic came back stale.
local stale = (#members ~= n)
if not stale then
  local registered = {}
  for _, g in ipairs(members) do registered[g] = true end
  for i = 1, n do
    local g = ARGV[3 + i]
    if not registered[g] then stale = true break end
    registered[g] = nil  -- each group once: a repeated name cannot stand in for another
  end
end
if stale then
  local out = {'stale'}
  for i = 1, #members do out[#out + 1] = members[i] end
  return out
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, window = ARGV[1], tonumber(ARGV[2])
-- pass 1, reads only: which subscriptions already have this event (a re-sent publish)
local dup = {}
for i = 1, n do
  local b = 1 + 5 * (i - 1)
  local seen = window > 0 and redis.call('ZSCORE', KEYS[b + 5], id)
  dup[i] = (seen and tonumber(seen) > now - window) or redis.call('HEXISTS', KEYS[b + 2], id) == 1
end
-- pass 2, writes: the event's job in every subscription that lacks it
local out = {'ok'}
for i = 1, n do
  local b = 1 + 5 * (i - 1)
  local k_ready, k_env, k_state, k_counters, k_enq = KEYS[b + 1], KEYS[b + 2], KEYS[b + 3],
    KEYS[b + 4], KEYS[b + 5]
  if window > 0 then  -- forget ids older than the window, bounded per call
    local old = redis.call('ZRANGEBYSCORE', k_enq, '-inf', now - window, 'LIMIT', 0, 500)
    if #old > 0 then redis.call('ZREM', k_enq, unpack(old)) end
  end
  if dup[i] then
    out[#out + 1] = 0
  else
    if window > 0 then redis.call('ZADD', k_enq, now, id) end
    redis.call('HSET', k_env, id, ARGV[3 + n + i])
    redis.call('HSET', k_state, id, 'normal|0|0|0')
    redis.call('XADD', k_ready, '*', 'j', id)
    redis.call('HINCRBY', k_counters, 'enqueued', 1)
    out[#out + 1] = 1
  end
end
return out
