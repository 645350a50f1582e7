-- dlq_replay: move dead letters back to their ready stream (oldest first when no ids given).
-- Touches: {wf:Q}:dlq (ZREM), {wf:Q}:dlq:data (HDEL), {wf:Q}:env (the record's envelope, or the
--          exact bytes of its envelope_base64), {wf:Q}:state ("prio|a|d|0"),
--          {wf:Q}:history (restored), {wf:Q}:ready:<prio> (XADD), {wf:Q}:counters (replayed).
-- ARGV: reset attempts 1|0, limit, offset, then job ids (none = the `limit` oldest entries
--       after the first `offset`: the caller skips the entries it already found live again).
-- Returns: {entries looked at, {replayed job ids}}. Lost deliveries always restart at 0: replay
-- is a human decision. An id that is live again is skipped (it stays in the DLQ).
-- The exact bytes of an envelope that was not UTF-8 (kept as base64 by dlq_insert).
local function b64_decode(s)
  local val = {}
  for k = 1, 64 do val[string.byte(B64, k)] = k - 1 end
  s = string.gsub(s, '[^%w%+/]', '')
  local out = {}
  for i = 1, #s, 4 do
    local a, b, c, d = string.byte(s, i, i + 3)
    local n = val[a] * 262144 + val[b] * 4096 + (c and val[c] or 0) * 64 + (d and val[d] or 0)
    local bytes = string.char(math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
    out[#out + 1] = string.sub(bytes, 1, (c and (d and 3 or 2)) or 1)
  end
  return table.concat(out)
end

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
    if type(rec.envelope_base64) == 'string' then env = b64_decode(rec.envelope_base64) end
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
