#!lua flags=allow-oom
-- dead_letter: move held jobs to the DLQ with their full failure metadata; fenced by token.
-- Touches: {wf:Q}:inflight (token check, HDEL), {wf:Q}:state, {wf:Q}:env, {wf:Q}:history
--          (moved into the record, then HDEL), {wf:Q}:ready:<prio> (XACK + XDEL), {wf:Q}:leases
--          (ZREM), {wf:Q}:dlq (ZADD + retention), {wf:Q}:dlq:data (HSET record),
--          {wf:Q}:counters (dead_lettered, failed).
-- ARGV: dlq max length, dlq retention ms, packed records, per job: id, token, reason, counts as
--       an attempt 1|0, failure JSON ('' = none) (0 e.g. for an unknown task: recorded in the
--       history, but not a handler failure).
-- Returns: flat {1|0, ...} (0 = stale token).
local now = now_ms()
local dlq_max, dlq_ret = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local failed = 0
local i = 0
for id, token, reason, counts, failure in string.gmatch(ARGV[3], REC[5]) do
  i = i + 1
  local r = {id, token, reason, counts, failure}
  local fl = fl_get(redis.call('HGET', K_INFLIGHT, id))
  local st = st_get(redis.call('HGET', K_STATE, id))
  if fl and st and fl.t == r[2] then
    entry_remove(fl)
    redis.call('ZREM', K_LEASES, id)
    redis.call('HDEL', K_INFLIGHT, id)
    if r[4] == '1' then
      st.a = st.a + 1
      failed = failed + 1
    end
    if r[5] ~= '' then history_append(id, r[5], st, now) end
    dlq_insert(id, st, r[3], fl.w, now, dlq_max, dlq_ret)
    out[i] = 1
  else
    out[i] = 0
  end
end
if failed > 0 then redis.call('HINCRBY', K_COUNTERS, 'failed', failed) end
return out
