-- dlq_replay: move dead letters back to their ready stream (oldest first when no ids given).
-- Touches: {wf:Q}:dlq (ZREM), {wf:Q}:dlq:data (HDEL), {wf:Q}:env, {wf:Q}:state ("prio|a|d|0"),
--          {wf:Q}:history (restored), {wf:Q}:ready:<prio> (XADD), {wf:Q}:counters (replayed).
-- ARGV: reset attempts 1|0, limit, offset, then job ids (none = the `limit` oldest entries
--       after the first `offset`: the caller skips the entries it already found live again).
-- Returns: {entries looked at, {replayed job ids}}. Lost deliveries always restart at 0: replay
-- is a human decision. An id that is live again is skipped (it stays in the DLQ).
local reset = ARGV[1] == '1'
local limit = tonumber(ARGV[2])
local offset = tonumber(ARGV[3])
local ids = {}
if #ARGV > 3 then
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', K_DLQ, offset, offset + limit - 1)
end
local out = {}
for _, id in ipairs(ids) do
  local rec = dec(redis.call('HGET', K_DLQDATA, id))
  -- a job id that is live again (re-enqueued meanwhile) stays in the DLQ: never two copies
  if rec and redis.call('HEXISTS', K_ENV, id) == 0 then
    local env = rec.envelope or ''
    local prio = rec.priority
    if not K_READY[prio] then prio = 'normal' end
    local st = {p = prio, a = reset and 0 or math.floor(tonumber(rec.attempts) or 0),
                d = math.floor(tonumber(rec.deliveries) or 0), l = 0}
    redis.call('XADD', K_READY[prio], '*', 'j', id)
    redis.call('HSET', K_ENV, id, env)
    redis.call('HSET', K_STATE, id, st_put(st))
    if type(rec.history) == 'table' and rec.history[1] ~= nil then
      redis.call('HSET', K_HIST, id, cjson.encode(rec.history))
    end
    redis.call('ZREM', K_DLQ, id)
    redis.call('HDEL', K_DLQDATA, id)
    out[#out + 1] = id
  end
end
if #out > 0 then redis.call('HINCRBY', K_COUNTERS, 'replayed', #out) end
return {#ids, out}
