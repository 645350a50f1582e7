#!lua flags=no-writes
-- stats: READ-ONLY snapshot of a queue in one round trip (the operator's input).
-- Touches (reads only): {wf:Q}:ready:* (XLEN, XINFO GROUPS, XRANGE first undelivered),
--          {wf:Q}:leases (ZCARD), {wf:Q}:delayed (ZCOUNT, first due), {wf:Q}:dlq (ZCARD, first),
--          {wf:Q}:counters (HGETALL), {wf:Q}:workers (HMGET live), {wf:Q}:workers:expiry.
-- Also reads the server's maxmemory-policy (INFO memory; '' when the user may not run INFO).
-- ARGV: none.
-- Returns: {now ms, stream entries total, leases, due delayed, future delayed, dlq length,
--           oldest unstarted ms (-1 none), {counters flat}, {live worker JSON...}, expired workers,
--           maxmemory-policy, oldest dead letter ms (-1 none)}.
local now = now_ms()
local entries = 0
local oldest = -1
for _, p in ipairs(PRIO) do
  local k = K_READY[p]
  local len = redis.call('XLEN', k)
  entries = entries + len
  if len > 0 then
    local last = last_delivered(k)
    local first = redis.call('XRANGE', k, '(' .. last, '+', 'COUNT', 1)
    if #first > 0 then
      local ms = tonumber(string.match(first[1][1], '^(%d+)'))
      if oldest < 0 or ms < oldest then oldest = ms end
    end
  end
end
local leases = redis.call('ZCARD', K_LEASES)
local due = redis.call('ZCOUNT', K_DELAYED, '-inf', now)
local future = redis.call('ZCARD', K_DELAYED) - due
if due > 0 then
  local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  local ms = tonumber(d[2])
  if oldest < 0 or ms < oldest then oldest = ms end
end
local dlq = redis.call('ZCARD', K_DLQ)
local counters = redis.call('HGETALL', K_COUNTERS)
local live = redis.call('ZRANGEBYSCORE', K_WEXP, '(' .. now, '+inf')
local workers = {}
if #live > 0 then
  local recs = hmget_chunked(K_WORKERS, live)
  for i = 1, #recs do if recs[i] then workers[#workers + 1] = recs[i] end end
end
local expired = redis.call('ZCOUNT', K_WEXP, '-inf', now)
-- Anything but noeviction may drop queue keys (docs/queue-engine.md); pcall: INFO is an ACL
-- "dangerous" command a restricted user may lack, which must not cost it its stats.
local info = redis.pcall('INFO', 'memory')
local policy = ''
if type(info) == 'string' then policy = string.match(info, 'maxmemory_policy:([%w%-]+)') or '' end
local dlq_oldest = -1
if dlq > 0 then
  local first = redis.call('ZRANGE', K_DLQ, 0, 0, 'WITHSCORES')
  dlq_oldest = tonumber(first[2])
end
return {now, entries, leases, due, future, dlq, oldest, counters, workers, expired, policy,
  dlq_oldest}
