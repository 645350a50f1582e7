#!lua
-- enqueue: add a batch of jobs atomically.
-- Touches: {wf:Q}:ready:<prio> (XADD), {wf:Q}:env (HSETNX), {wf:Q}:state (HSET "prio|0|0|0"),
--          {wf:Q}:delayed (ZADD), {wf:Q}:counters (enqueued), {wf:Q}:enqueued (ZADD NX,
--          trimmed; KEYS[ARGV[1]]), {wf:Q}:idem:<key> (SET NX PX; KEYS[idx]).
-- ARGV[1]: index in KEYS of {wf:Q}:enqueued; ARGV[2]: its window ms (0 = none);
-- ARGV[3]: packed records (see prelude), per job: id, priority, delay ms, idem key index
--       (0 = none), idem ttl ms; ARGV[3 + i]: the envelope JSON of job i (kept as its own
--       argument so Lua never copies it).
-- Returns: flat {job id, created 1|0, ...}; a duplicate idempotency key returns the first id;
--          a job id that exists, or was enqueued within the window (it may have run and been
--          deleted since), is not added again: a re-sent call after a lost reply is a no-op.
-- The bare '#!lua' (flags, but not allow-oom): a full Redis refuses the whole call before it
-- runs. Without it Redis checked only the first write, here mostly the ZREM that forgets old
-- ids, so a busy producer's enqueues were accepted past maxmemory.
local now = now_ms()
local K_ENQUEUED = KEYS[tonumber(ARGV[1])]
local window = tonumber(ARGV[2])
local out = {}
local states = {}
local i = 3
-- forget the ids older than the window, bounded per call (each call adds at most one batch)
local expired = redis.call('ZRANGEBYSCORE', K_ENQUEUED, '-inf', now - window, 'LIMIT', 0, 2000)
if #expired > 0 then call_chunked('ZREM', K_ENQUEUED, expired) end
for id, prio, delay_s, idx_s, ttl_s in string.gmatch(ARGV[3], REC[5]) do
  i = i + 1
  local env = ARGV[i]
  local delay, idx, ttl = tonumber(delay_s), tonumber(idx_s), tonumber(ttl_s)
  if not K_READY[prio] then prio = 'normal' end
  local dup = nil
  if idx > 0 then
    if not redis.call('SET', KEYS[idx], id, 'NX', 'PX', math.max(1, ttl)) then
      dup = redis.call('GET', KEYS[idx])
    end
  end
  -- one ZADD NX per job remembers the id; an id already there is a re-send unless its entry
  -- outlived the window (an expired entry the bounded trim has not reached yet)
  if not dup and window > 0 and redis.call('ZADD', K_ENQUEUED, 'NX', now, id) == 0 then
    if tonumber(redis.call('ZSCORE', K_ENQUEUED, id)) > now - window then
      dup = id
    else
      redis.call('ZADD', K_ENQUEUED, now, id)
    end
  end
  if not dup and redis.call('HSETNX', K_ENV, id, env) == 0 then dup = id end
  if dup then
    out[#out + 1] = dup
    out[#out + 1] = 0
  else
    if delay > 0 then
      redis.call('ZADD', K_DELAYED, now + delay, id)
    else
      redis.call('XADD', K_READY[prio], '*', 'j', id)
    end
    states[#states + 1] = id
    states[#states + 1] = prio .. '|0|0|0'
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
if #states > 0 then
  call_chunked('HSET', K_STATE, states)
  redis.call('HINCRBY', K_COUNTERS, 'enqueued', #states / 2)
end
return out
