#!lua flags=allow-oom
-- adopt: hand a worker the jobs that are delivered to it but that it never received — a fetch
-- whose reply was lost (connection dropped or timed out after the script ran). Without this
-- they would be held by nobody until their lease expires (and count as a lost delivery).
-- Called by the worker after a failed fetch, never on the hot path.
-- Touches: {wf:Q}:ready:* (XPENDING of the worker's consumer, XRANGE of each entry; read),
--          {wf:Q}:inflight (read: token, entry, worker), {wf:Q}:state (read), {wf:Q}:env (read),
--          {wf:Q}:leases (ZADD: a fresh lease for each adopted job).
-- ARGV: worker, lease ms, most entries to look at per stream, packed records id, token of the
--       deliveries the worker holds (skipped).
-- Returns: {now, {id, token, envelope, attempts, deliveries, lost, ...}} (fetch's job layout;
--          the delivery is the one the lost fetch made: tokens and counts are unchanged).
local worker = ARGV[1]
local lease = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local held = {}
for id, token in string.gmatch(ARGV[4], REC[2]) do held[id .. '|' .. token] = true end
local now = now_ms()
local until_ms = now + lease
local out = {}
for _, p in ipairs(PRIO) do
  local pending = redis.pcall('XPENDING', K_READY[p], GROUP, '-', '+', limit, worker)
  if pending.err then pending = {} end  -- no stream or no group yet: nothing delivered from it
  for _, pe in ipairs(pending) do
    local entry = redis.call('XRANGE', K_READY[p], pe[1], pe[1])
    local id = entry[1] and entry[1][2][2]
    if id then
      local fl = fl_get(redis.call('HGET', K_INFLIGHT, id))
      local st = st_get(redis.call('HGET', K_STATE, id))
      if fl and st and fl.w == worker and fl.e == pe[1] and not held[id .. '|' .. fl.t] then
        redis.call('ZADD', K_LEASES, until_ms, id)
        out[#out + 1] = id
        out[#out + 1] = fl.t
        out[#out + 1] = redis.call('HGET', K_ENV, id) or ''
        out[#out + 1] = st.a
        out[#out + 1] = st.d
        out[#out + 1] = st.l
      end
    end
  end
end
return {now, out}
