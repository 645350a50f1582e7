-- dlq_purge: delete dead letters by id, by age, or all of them (bounded per call).
-- Touches: {wf:Q}:dlq (ZREM), {wf:Q}:dlq:data (HDEL).
-- ARGV: mode ('ids' | 'age' | 'all'), then ids (mode ids) or the cutoff age in ms (mode age).
-- Returns: number of dead letters deleted by this call (callers loop while it returns 1000).
local mode = ARGV[1]
local ids = {}
if mode == 'ids' then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
elseif mode == 'age' then
  ids = redis.call('ZRANGEBYSCORE', K_DLQ, '-inf', now_ms() - tonumber(ARGV[2]), 'LIMIT', 0, 1000)
else
  ids = redis.call('ZRANGE', K_DLQ, 0, 999)
end
if #ids == 0 then return 0 end
local n = call_chunked('ZREM', K_DLQ, ids)
call_chunked('HDEL', K_DLQDATA, ids)
return n
