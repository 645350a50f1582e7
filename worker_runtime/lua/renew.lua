-- renew: extend the leases of all jobs a worker holds, fenced by token and worker, and
-- (optionally) write the worker's heartbeat; reap workers whose heartbeat expired.
-- Touches: {wf:Q}:state (read), {wf:Q}:leases (ZADD), {wf:Q}:workers (HSET/HDEL),
--          {wf:Q}:workers:expiry (ZADD/ZREM), {wf:Q}:counters (workers_lost),
--          {wf:Q}:ready:* (XGROUP DELCONSUMER of reaped workers; leases stay the truth).
-- ARGV: worker, lease ms, heartbeat JSON ('' = none), heartbeat ttl ms, n, then n pairs id, token.
-- Returns: flat {1|0, ...} (1 = renewed, 0 = lost: the token is no longer this worker's).
local now = now_ms()
local worker, lease = ARGV[1], tonumber(ARGV[2])
local hb, hb_ttl = ARGV[3], tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local out = {}
if n > 0 then
  local ids = {}
  for i = 0, n - 1 do ids[i + 1] = ARGV[6 + i * 2] end
  local raws = redis.call('HMGET', K_STATE, unpack(ids))
  local zargs = {}
  for i = 1, n do
    local st = dec(raws[i])
    if st and st.t ~= 0 and tostring(st.t) == ARGV[7 + (i - 1) * 2] and st.w == worker then
      zargs[#zargs + 1] = now + lease
      zargs[#zargs + 1] = ids[i]
      out[i] = 1
    else
      out[i] = 0
    end
  end
  if #zargs > 0 then redis.call('ZADD', K_LEASES, unpack(zargs)) end
end
if hb ~= '' then
  local rec = dec(hb) or {}
  rec.worker_id = worker
  rec.last_seen = now / 1000
  redis.call('HSET', K_WORKERS, worker, cjson.encode(rec))
  redis.call('ZADD', K_WEXP, now + hb_ttl, worker)
end
local gone = redis.call('ZRANGEBYSCORE', K_WEXP, '-inf', now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', K_WEXP, unpack(gone))
  redis.call('HDEL', K_WORKERS, unpack(gone))
  redis.call('HINCRBY', K_COUNTERS, 'workers_lost', #gone)
  for _, w in ipairs(gone) do
    for _, p in ipairs(PRIO) do redis.pcall('XGROUP', 'DELCONSUMER', K_READY[p], GROUP, w) end
  end
end
return out
