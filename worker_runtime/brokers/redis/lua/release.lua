#!lua flags=allow-oom
-- release: give held jobs back to their ready stream. Streams cannot un-claim an entry, so the
-- job is re-added and the old entry acknowledged and deleted in this one step. A drain's
-- release spends nothing (state unchanged). A delivery its own worker no longer holds (fetch
-- renewed its expired lease, but the worker had dropped the job) ends as a lost delivery, as a
-- reclaim would end it: lost+1, and at max deliveries the job goes to the DLQ instead.
-- Touches: {wf:Q}:inflight (token check, HDEL), {wf:Q}:ready:<prio> (XACK + XDEL old, XADD
--          new), {wf:Q}:leases (ZREM), {wf:Q}:counters (released, dead_lettered),
--          {wf:Q}:state (lost+1; lost records only), {wf:Q}:dlq, {wf:Q}:dlq:data, {wf:Q}:env,
--          {wf:Q}:history (a lost record at max deliveries → DLQ "max_deliveries").
-- ARGV: max deliveries, dlq max length, dlq retention ms, packed records: id, token, lost 1|0.
-- Returns: flat {1|2|0, ...} (1 = back on the queue, 2 = dead-lettered, 0 = stale token).
local max_deliveries = tonumber(ARGV[1])
local dlq_max, dlq_ret = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {}
local ok = 0
local i = 0
for id, token, lost in string.gmatch(ARGV[4], REC[3]) do
  i = i + 1
  local fl = fl_get(redis.call('HGET', K_INFLIGHT, id))
  out[i] = 0
  if fl and fl.t == token then
    entry_remove(fl)
    redis.call('ZREM', K_LEASES, id)
    redis.call('HDEL', K_INFLIGHT, id)
    local st = lost == '1' and st_get(redis.call('HGET', K_STATE, id)) or nil
    if st then st.l = st.l + 1 end
    if st and st.l >= max_deliveries then
      dlq_insert(id, st, 'max_deliveries', fl.w, now, dlq_max, dlq_ret)
      out[i] = 2
    else
      if st then redis.call('HSET', K_STATE, id, st_put(st)) end
      redis.call('XADD', K_READY[fl.p], '*', 'j', id)
      ok = ok + 1
      out[i] = 1
    end
  end
end
if ok > 0 then redis.call('HINCRBY', K_COUNTERS, 'released', ok) end
return out
