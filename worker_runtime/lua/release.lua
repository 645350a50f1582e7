-- release: give held jobs back without spending an attempt (drain). Streams cannot un-claim an
-- entry, so the job is re-added and the old entry acknowledged and deleted in this one step.
-- Touches: {wf:Q}:inflight (token check, HDEL), {wf:Q}:ready:<prio> (XACK + XDEL old, XADD
--          new), {wf:Q}:leases (ZREM), {wf:Q}:counters (released). State is unchanged.
-- ARGV[1]: packed records, per job: id, token.
-- Returns: flat {1|0, ...} (0 = stale token).
local out = {}
local ok = 0
local i = 0
for id, token in string.gmatch(ARGV[1], REC[2]) do
  i = i + 1
  local r = {id, token}
  local fl = fl_get(redis.call('HGET', K_INFLIGHT, id))
  if fl and fl.t == r[2] then
    entry_remove(fl)
    redis.call('ZREM', K_LEASES, id)
    redis.call('HDEL', K_INFLIGHT, id)
    redis.call('XADD', K_READY[fl.p], '*', 'j', id)
    ok = ok + 1
    out[i] = 1
  else
    out[i] = 0
  end
end
if ok > 0 then redis.call('HINCRBY', K_COUNTERS, 'released', ok) end
return out
