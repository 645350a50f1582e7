-- retry: a handler failed and may run again later; fenced by token.
-- Touches: {wf:Q}:state (attempts+1, token cleared), {wf:Q}:history (failure appended),
--          {wf:Q}:ready:<prio> (XACK + XDEL), {wf:Q}:leases (ZREM), {wf:Q}:delayed (ZADD due),
--          {wf:Q}:counters (failed, retried).
-- ARGV: n, then per job 4 values: id, token, delay ms, failure JSON.
-- Returns: flat {1|0, ...} (0 = stale token).
local now = now_ms()
local n = tonumber(ARGV[1])
local out = {}
local ok = 0
for i = 0, n - 1 do
  local b = 2 + i * 4
  local id = ARGV[b]
  local st = dec(redis.call('HGET', K_STATE, id))
  if st and st.t ~= 0 and tostring(st.t) == ARGV[b + 1] then
    stream_remove(st)
    redis.call('ZREM', K_LEASES, id)
    st.a = (st.a or 0) + 1
    st.t = 0
    st.w = ''
    history_append(id, ARGV[b + 3], st, now)
    redis.call('ZADD', K_DELAYED, now + math.max(0, tonumber(ARGV[b + 2])), id)
    redis.call('HSET', K_STATE, id, enc(st))
    ok = ok + 1
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
if ok > 0 then
  redis.call('HINCRBY', K_COUNTERS, 'failed', ok)
  redis.call('HINCRBY', K_COUNTERS, 'retried', ok)
end
return out
