#!lua flags=no-writes
-- dlq_list: READ-ONLY page of dead letters, newest first.
-- Touches (reads only): {wf:Q}:dlq (ZCARD, ZREVRANGE), {wf:Q}:dlq:data (HMGET).
-- ARGV: offset, limit.
-- Returns: {total, {record JSON...}}.
local offset, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local total = redis.call('ZCARD', K_DLQ)
local ids = redis.call('ZREVRANGE', K_DLQ, offset, offset + limit - 1)
local out = {}
if #ids > 0 then
  local recs = hmget_chunked(K_DLQDATA, ids)
  for i = 1, #recs do if recs[i] then out[#out + 1] = recs[i] end end
end
return {total, out}
