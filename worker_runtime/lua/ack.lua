-- ack: finish a batch of jobs, fenced by their tokens; a stale token is rejected.
-- Touches: {wf:Q}:state (token check, HDEL), {wf:Q}:env, {wf:Q}:history (HDEL),
--          {wf:Q}:ready:<prio> (XACK + XDEL), {wf:Q}:leases (ZREM), {wf:Q}:counters (completed),
--          {wf:Q}:done:<key> (SET PX; KEYS[idx]) when the handler records "done" with the ack.
-- ARGV: n, then per job 4 values: id, token, done key index (0 = none), done ttl ms.
-- Returns: flat {1|0, ...} (1 = acknowledged, 0 = stale: the job was handed to someone else).
local n = tonumber(ARGV[1])
local ids = {}
for i = 0, n - 1 do ids[i + 1] = ARGV[2 + i * 4] end
local raws = redis.call('HMGET', K_STATE, unpack(ids))
local out, done_ids = {}, {}
local by_prio = {high = {}, normal = {}, low = {}}
for i = 0, n - 1 do
  local b = 2 + i * 4
  local st = dec(raws[i + 1])
  if st and st.t ~= 0 and tostring(st.t) == ARGV[b + 1] then
    out[i + 1] = 1
    done_ids[#done_ids + 1] = ids[i + 1]
    st.t = 0  -- a second ack of the same delivery inside this batch is stale
    raws[i + 1] = enc(st)
    if st.e ~= '' then
      local list = by_prio[st.p] or by_prio['normal']
      list[#list + 1] = st.e
    end
    local idx = tonumber(ARGV[b + 2])
    if idx > 0 then redis.call('SET', KEYS[idx], '1', 'PX', math.max(1, tonumber(ARGV[b + 3]))) end
  else
    out[i + 1] = 0
  end
end
for _, p in ipairs(PRIO) do
  local list = by_prio[p]
  if #list > 0 then
    redis.call('XACK', K_READY[p], GROUP, unpack(list))
    redis.call('XDEL', K_READY[p], unpack(list))
  end
end
if #done_ids > 0 then
  redis.call('ZREM', K_LEASES, unpack(done_ids))
  redis.call('HDEL', K_STATE, unpack(done_ids))
  redis.call('HDEL', K_ENV, unpack(done_ids))
  redis.call('HDEL', K_HIST, unpack(done_ids))
  redis.call('HINCRBY', K_COUNTERS, 'completed', #done_ids)
end
return out
