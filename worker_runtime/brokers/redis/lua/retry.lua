#!lua flags=allow-oom
-- retry: a handler failed and may run again later; fenced by token.
-- Touches: {wf:Q}:inflight (token check, HDEL), {wf:Q}:state (attempts+1), {wf:Q}:history
--          (failure appended), {wf:Q}:ready:<prio> (XACK + XDEL), {wf:Q}:leases (ZREM),
--          {wf:Q}:delayed (ZADD due), {wf:Q}:counters (failed, retried).
-- ARGV[1]: packed records, per job: id, token, delay ms, failure JSON.
-- Returns: flat {1|0, ...} (0 = stale token).
local now = now_ms()
local out = {}
local ok = 0
local i = 0
for id, token, delay_ms, failure in string.gmatch(ARGV[1], REC[4]) do
  i = i + 1
  local r = {id, token, delay_ms, failure}
  local fl = fl_get(redis.call('HGET', K_INFLIGHT, id))
  local st = st_get(redis.call('HGET', K_STATE, id))
  if fl and st and fl.t == r[2] then
    entry_remove(fl)
    redis.call('ZREM', K_LEASES, id)
    redis.call('HDEL', K_INFLIGHT, id)
    st.a = st.a + 1
    history_append(id, r[4], st, now)
    redis.call('ZADD', K_DELAYED, now + math.max(0, tonumber(r[3])), id)
    redis.call('HSET', K_STATE, id, st_put(st))
    ok = ok + 1
    out[i] = 1
  else
    out[i] = 0
  end
end
if ok > 0 then
  redis.call('HINCRBY', K_COUNTERS, 'failed', ok)
  redis.call('HINCRBY', K_COUNTERS, 'retried', ok)
end
return out
