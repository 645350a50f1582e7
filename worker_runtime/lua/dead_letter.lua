-- dead_letter: move held jobs to the DLQ with their full failure metadata; fenced by token.
-- Touches: {wf:Q}:state, {wf:Q}:env, {wf:Q}:history (moved into the record, then HDEL),
--          {wf:Q}:ready:<prio> (XACK + XDEL), {wf:Q}:leases (ZREM), {wf:Q}:dlq (ZADD + retention),
--          {wf:Q}:dlq:data (HSET record), {wf:Q}:counters (dead_lettered, failed).
-- ARGV: n, dlq max length, dlq retention ms, then per job 5 values: id, token, reason, failure
--       JSON ('' = none), counts as an attempt 1|0 (0 e.g. for an unknown task: recorded in the
--       history, but not a handler failure).
-- Returns: flat {1|0, ...} (0 = stale token).
local now = now_ms()
local n = tonumber(ARGV[1])
local dlq_max, dlq_ret = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local failed = 0
for i = 0, n - 1 do
  local b = 4 + i * 5
  local id = ARGV[b]
  local st = dec(redis.call('HGET', K_STATE, id))
  if st and st.t ~= 0 and tostring(st.t) == ARGV[b + 1] then
    stream_remove(st)
    redis.call('ZREM', K_LEASES, id)
    if ARGV[b + 4] == '1' then
      st.a = (st.a or 0) + 1
      failed = failed + 1
    end
    if ARGV[b + 3] ~= '' then history_append(id, ARGV[b + 3], st, now) end
    dlq_insert(id, st, ARGV[b + 2], now, dlq_max, dlq_ret)
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
if failed > 0 then redis.call('HINCRBY', K_COUNTERS, 'failed', failed) end
return out
