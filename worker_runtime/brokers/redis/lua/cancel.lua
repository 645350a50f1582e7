#!lua flags=allow-oom
-- cancel: remove jobs that have not started, by id, each judged and removed in this one step.
-- Touches: {wf:Q}:state (read: is the job live; HDEL), {wf:Q}:inflight (read: leased = refused),
--          {wf:Q}:delayed (ZREM: scheduled jobs and retries waiting out their backoff),
--          {wf:Q}:ready:<prio> (XINFO GROUPS, XRANGE after the group's last delivered id,
--          XDEL of the job's undelivered entry), {wf:Q}:env, {wf:Q}:history (HDEL),
--          {wf:Q}:dlq (read: dead-lettered = refused), {wf:Q}:counters (cancelled).
-- Kept: {wf:Q}:enqueued (the id's enqueue-dedup entry) and {wf:Q}:idem:<key>: a re-sent
--       enqueue of a cancelled job (a producer retrying a lost reply) stays a no-op until they
--       expire, so a cancel is never undone behind the caller's back.
-- ARGV: the job ids, one per argument.
-- Returns: flat {outcome, ...} one per id in order: 'cancelled', 'running' (leased: not
--          touched), 'dead_lettered' (refused: dlq purge deletes it) or 'unknown'.
-- Why this is enough: fetch hands out only ids that have a state (an undelivered stream entry
-- whose job has none is acknowledged and deleted when read; a due delayed id without one is
-- dropped when promoted). A job is cancelled by deleting its state here, in the same step as the
-- check that it is not leased, so a fetch runs either before (the job is leased: 'running') or
-- after (nothing to hand out). Deleting the stream entry too keeps the streams' length equal to
-- undelivered + leased jobs, and lets the same id be enqueued again later without an old entry
-- delivering it twice. The entry is found by reading the undelivered part of the job's priority
-- stream (every entry after the group's last delivered id, in pages): one read per priority for
-- all ids of the call, ending when every wanted entry was found.
local out = {}
local wanted = {high = {}, normal = {}, low = {}}
local left = {high = 0, normal = 0, low = 0}
local cancelled = 0
for i, id in ipairs(ARGV) do
  local st = st_get(redis.call('HGET', K_STATE, id))
  if st then
    if redis.call('HEXISTS', K_INFLIGHT, id) == 1 then
      out[i] = 'running'
    else
      if redis.call('ZREM', K_DELAYED, id) == 0 and K_READY[st.p] then
        if not wanted[st.p][id] then left[st.p] = left[st.p] + 1 end
        wanted[st.p][id] = true
      end
      redis.call('HDEL', K_STATE, id)
      redis.call('HDEL', K_ENV, id)
      redis.call('HDEL', K_HIST, id)
      cancelled = cancelled + 1
      out[i] = 'cancelled'
    end
  elseif redis.call('ZSCORE', K_DLQ, id) then
    out[i] = 'dead_lettered'
  else
    out[i] = 'unknown'
  end
end
for _, p in ipairs(PRIO) do
  local stream, want = K_READY[p], wanted[p]
  local from = '(' .. last_delivered(stream)
  while left[p] > 0 do
    local page = redis.call('XRANGE', stream, from, '+', 'COUNT', CHUNK)
    for _, e in ipairs(page) do
      local id = e[2][2]
      if want[id] then
        redis.call('XDEL', stream, e[1])
        want[id] = nil
        left[p] = left[p] - 1
      end
    end
    if #page < CHUNK then break end
    from = '(' .. page[#page][1]
  end
end
if cancelled > 0 then redis.call('HINCRBY', K_COUNTERS, 'cancelled', cancelled) end
return out
