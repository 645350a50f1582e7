#!lua flags=allow-oom
-- renew: extend the leases of all jobs a worker holds, fenced by token and worker, and
-- (optionally) write the worker's heartbeat; reap workers whose heartbeat expired.
-- Touches: {wf:Q}:inflight (read), {wf:Q}:leases (ZADD), {wf:Q}:workers (HSET/HDEL),
--          {wf:Q}:workers:expiry (ZADD/ZREM), {wf:Q}:counters (workers_lost),
--          {wf:Q}:ready:* (reaped workers' pending entries XCLAIMed to the consumer
--          "workerfleet:orphaned", then XGROUP DELCONSUMER; leases stay the truth).
-- ARGV: worker, lease ms, heartbeat JSON ('' = none), heartbeat ttl ms, packed records id, token.
-- Returns: flat {1|0, ...} (1 = renewed, 0 = lost: the token is no longer this worker's).
local now = now_ms()
local worker, lease = ARGV[1], tonumber(ARGV[2])
local hb, hb_ttl = ARGV[3], tonumber(ARGV[4])
local recs, ids = {}, {}
for id, token in string.gmatch(ARGV[5], REC[2]) do
  recs[#recs + 1] = {id, token}
  ids[#ids + 1] = id
end
local n = #recs
local out = {}
if n > 0 then
  local raws = hmget_chunked(K_INFLIGHT, ids)
  local zargs = {}
  for i = 1, n do
    local fl = fl_get(raws[i])
    if fl and fl.t == recs[i][2] and fl.w == worker then
      zargs[#zargs + 1] = now + lease
      zargs[#zargs + 1] = ids[i]
      out[i] = 1
    else
      out[i] = 0
    end
  end
  if #zargs > 0 then call_chunked('ZADD', K_LEASES, zargs) end
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
  call_chunked('ZREM', K_WEXP, gone)
  call_chunked('HDEL', K_WORKERS, gone)
  redis.call('HINCRBY', K_COUNTERS, 'workers_lost', #gone)
  for _, w in ipairs(gone) do
    consumer_remove(w)
  end
end
return out
