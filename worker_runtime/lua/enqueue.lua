-- enqueue: add a batch of jobs atomically.
-- Touches: {wf:Q}:ready:<prio> (XADD), {wf:Q}:env, {wf:Q}:state (HSET), {wf:Q}:delayed (ZADD),
--          {wf:Q}:counters (enqueued), {wf:Q}:idem:<key> (SET NX PX; KEYS[idx]).
-- ARGV: n, then per job 6 values: id, envelope JSON, priority, delay ms, idem key index (0 =
--       none), idem ttl ms.
-- Returns: flat {job id, created 1|0, ...}; a duplicate idempotency key returns the first id.
local now = now_ms()
local n = tonumber(ARGV[1])
local out = {}
local created = 0
for i = 0, n - 1 do
  local b = 2 + i * 6
  local id, env, prio = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local delay, idx, ttl = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  if not K_READY[prio] then prio = 'normal' end
  local dup = nil
  if idx > 0 then
    if not redis.call('SET', KEYS[idx], id, 'NX', 'PX', math.max(1, ttl)) then
      dup = redis.call('GET', KEYS[idx])
    end
  end
  if dup then
    out[#out + 1] = dup
    out[#out + 1] = 0
  else
    local st = {a = 0, d = 0, l = 0, t = 0, w = '', e = '', p = prio, s = 0}
    if delay > 0 then
      redis.call('ZADD', K_DELAYED, now + delay, id)
    else
      st.e = redis.call('XADD', K_READY[prio], '*', 'j', id)
    end
    redis.call('HSET', K_ENV, id, env)
    redis.call('HSET', K_STATE, id, enc(st))
    created = created + 1
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
if created > 0 then redis.call('HINCRBY', K_COUNTERS, 'enqueued', created) end
return out
