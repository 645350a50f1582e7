-- release: give held jobs back without spending an attempt (drain). Streams cannot un-claim an
-- entry, so the job is re-added and the old entry acknowledged and deleted in this one step.
-- Touches: {wf:Q}:state (token cleared, new entry id), {wf:Q}:ready:<prio> (XACK + XDEL old,
--          XADD new), {wf:Q}:leases (ZREM), {wf:Q}:counters (released).
-- ARGV: n, then per job 2 values: id, token.
-- Returns: flat {1|0, ...} (0 = stale token).
local n = tonumber(ARGV[1])
local out = {}
local ok = 0
for i = 0, n - 1 do
  local id = ARGV[2 + i * 2]
  local st = dec(redis.call('HGET', K_STATE, id))
  if st and st.t ~= 0 and tostring(st.t) == ARGV[3 + i * 2] then
    stream_remove(st)
    redis.call('ZREM', K_LEASES, id)
    st.t = 0
    st.w = ''
    st.e = redis.call('XADD', K_READY[st.p] or K_READY['normal'], '*', 'j', id)
    redis.call('HSET', K_STATE, id, enc(st))
    ok = ok + 1
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
if ok > 0 then redis.call('HINCRBY', K_COUNTERS, 'released', ok) end
return out
