#!lua flags=allow-oom
-- ack: finish a batch of jobs, fenced by their tokens; a stale token is rejected.
-- Touches: {wf:Q}:inflight (token check, HDEL), {wf:Q}:state, {wf:Q}:env, {wf:Q}:history (HDEL),
--          {wf:Q}:ready:<prio> (XACK; XPENDING summary, XTRIM MINID below the oldest pending
--          entry, XDEL of the ids above it), {wf:Q}:leases (ZREM), {wf:Q}:counters (completed),
--          {wf:Q}:done:<key> (SET PX; KEYS[idx]) when the handler records "done" with the ack.
-- ARGV[1]: packed records, per job: id, token, done key index (0 = none), done ttl ms.
-- Returns: flat {1|0, ...} (1 = acknowledged, 0 = stale: the job was handed to someone else).
local ids, tokens, idxs, ttls = {}, {}, {}, {}
for id, token, idx, ttl in string.gmatch(ARGV[1], REC[4]) do
  local k = #ids + 1
  ids[k], tokens[k], idxs[k], ttls[k] = id, token, idx, ttl
end
local raws = hmget_chunked(K_INFLIGHT, ids)
local out, done_ids, seen = {}, {}, {}
local by_prio = {high = {}, normal = {}, low = {}}
local match = string.match
for i, id in ipairs(ids) do
  local raw = raws[i]
  local t, p, e
  if raw then t, p, e = match(raw, FL_PATTERN) end
  if t and t == tokens[i] and not seen[id] then
    seen[id] = true  -- a second ack of the same delivery inside this batch is stale
    out[i] = 1
    done_ids[#done_ids + 1] = id
    if e ~= '' and by_prio[p] then
      local list = by_prio[p]
      list[#list + 1] = e
    end
    if idxs[i] ~= '0' then  -- a text compare: most acks carry no done key
      redis.call('SET', KEYS[tonumber(idxs[i])], '1', 'PX', math.max(1, tonumber(ttls[i])))
    end
  else
    out[i] = 0
  end
end
for _, p in ipairs(PRIO) do
  local list = by_prio[p]
  if #list > 0 then
    call_chunked('XACK', K_READY[p], list, GROUP)
    entries_remove_acked(K_READY[p], list)
  end
end
if #done_ids > 0 then
  call_chunked('ZREM', K_LEASES, done_ids)
  call_chunked('HDEL', K_INFLIGHT, done_ids)
  call_chunked('HDEL', K_STATE, done_ids)
  call_chunked('HDEL', K_ENV, done_ids)
  call_chunked('HDEL', K_HIST, done_ids)
  redis.call('HINCRBY', K_COUNTERS, 'completed', #done_ids)
end
return out
