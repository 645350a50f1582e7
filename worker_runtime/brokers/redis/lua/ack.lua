#!lua flags=allow-oom
-- ack: finish a batch of jobs, fenced by their tokens; a stale token is rejected.
-- Touches: {wf:Q}:inflight (token check, HDEL), {wf:Q}:state, {wf:Q}:env, {wf:Q}:history (HDEL),
--          {wf:Q}:ready:<prio> (XACK; XPENDING summary, XTRIM MINID below the oldest pending
--          entry, XDEL of the ids above it), {wf:Q}:leases (ZREM), {wf:Q}:counters (completed),
--          {wf:Q}:done:<key> (SET PX; KEYS[idx]) when the handler records "done" with the ack;
--          only when ARGV[2] keeps finished records: {wf:Q}:state (HMGET attempts|deliveries
--          first), {wf:Q}:finished (KEYS[16]: HSET the record, HDEL trimmed ones) and
--          {wf:Q}:finished:expiry (KEYS[17]: ZRANGEBYSCORE of expired ones, bounded; ZREM; ZADD;
--          PEXPIRE of both).
-- ARGV[1]: packed records, per job: id, token, done key index (0 = none), done ttl ms; with
--          ARGV[2] also the delivery's fetch ms (0 = not known) and its task.
-- ARGV[2] (absent = off, the default): keep finished records this many ms; ARGV[3]: expired
--          records trimmed beyond the number acknowledged (keys.FINISHED_TRIM_EXTRA).
-- Returns: flat {1|0, ...} (1 = acknowledged, 0 = stale: the job was handed to someone else).
local keep = tonumber(ARGV[2] or '0')
local ids, tokens, idxs, ttls = {}, {}, {}, {}
local fetched, tasks = {}, {}
if keep > 0 then
  for id, token, idx, ttl, at, task in string.gmatch(ARGV[1], REC[6]) do
    local k = #ids + 1
    ids[k], tokens[k], idxs[k], ttls[k], fetched[k], tasks[k] = id, token, idx, ttl, at, task
  end
else
  for id, token, idx, ttl in string.gmatch(ARGV[1], REC[4]) do
    local k = #ids + 1
    ids[k], tokens[k], idxs[k], ttls[k] = id, token, idx, ttl
  end
end
local raws = hmget_chunked(K_INFLIGHT, ids)
local out, done_ids, seen, done_at = {}, {}, {}, {}
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
    if keep > 0 then done_at[#done_ids] = i end
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
-- Finished records (keep_finished_seconds > 0): written before the state they read is deleted.
-- Trimming is bounded: at most as many expired records as this call acknowledges, plus
-- ARGV[3], so the records leave as fast as they come and no ack walks a long list.
if keep > 0 and #done_ids > 0 then
  local K_FIN, K_FINX = KEYS[16], KEYS[17]
  local now = now_ms()
  local gone = redis.call('ZRANGEBYSCORE', K_FINX, '-inf', now, 'LIMIT', 0,
    #done_ids + tonumber(ARGV[3]))
  if #gone > 0 then
    call_chunked('HDEL', K_FIN, gone)
    call_chunked('ZREM', K_FINX, gone)
  end
  local states = hmget_chunked(K_STATE, done_ids)
  local recs, until_ = {}, {}
  local expires = now + keep
  for j, id in ipairs(done_ids) do
    local i = done_at[j]
    local a, d = '0', '0'
    if states[j] then
      local _, sa, sd = match(states[j], ST_PATTERN)
      if sa then a, d = sa, sd end
    end
    local at, run = tonumber(fetched[i]) or 0, ''
    if at > 0 and now >= at then run = tostring(now - at) end
    recs[#recs + 1] = id
    recs[#recs + 1] = now .. '|' .. a .. '|' .. d .. '|' .. run .. '|' .. tasks[i]
    until_[#until_ + 1] = expires
    until_[#until_ + 1] = id
  end
  call_chunked('HSET', K_FIN, recs)
  call_chunked('ZADD', K_FINX, until_)
  redis.call('PEXPIRE', K_FIN, keep)
  redis.call('PEXPIRE', K_FINX, keep)
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
