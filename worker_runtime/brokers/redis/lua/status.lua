#!lua flags=no-writes
-- status: READ-ONLY look-up of jobs by id ("where is my job?"), every id judged in this one
-- step, so a job moving between the keys below (fetched, retried, dead-lettered, acked) is
-- seen in exactly one place, never in two or none.
-- Touches (reads only): {wf:Q}:state (HGET: live = has a state; prio|attempts|deliveries|lost),
--          {wf:Q}:inflight (HGET: leased = running; token|prio|stream entry id|worker),
--          {wf:Q}:leases (ZSCORE: lease expiry ms), {wf:Q}:delayed (ZSCORE: due ms of a
--          scheduled job or a retry waiting out its backoff), {wf:Q}:env (HGET: task and
--          enqueued_at of the envelope), {wf:Q}:history (HGET: the newest failure),
--          {wf:Q}:dlq (ZSCORE: dead-lettered ms), {wf:Q}:dlq:data (HGET: the dead letter's
--          record), {wf:Q}:enqueued (ZSCORE: enqueue ms of an id no longer live; KEYS[16]),
--          {wf:Q}:finished:expiry (ZSCORE: when a finished record expires; KEYS[18]) and
--          {wf:Q}:finished (HGET: the record of an acknowledged job; KEYS[17]), both only for
--          an id with neither a state nor a dead letter.
-- ARGV: the job ids, one per argument.
-- Returns: {now ms, then per id 11 values: state ('waiting', 'scheduled', 'running',
--          'dead_lettered', 'done' or 'unknown'), priority, attempts, deliveries, task, enqueued_at
--          (epoch seconds: the envelope's, or for an unknown id its {wf:Q}:enqueued entry's),
--          due ms, worker, lease expiry ms, the newest failure (JSON), the dead letter's record
--          (JSON) or a done job's finished record (keys.py's text)}; '' where there is nothing.
-- A live job (it has a state) wins over a dead letter of the same id (an id enqueued again
-- while its old dead letter waits). A finished job reads done only while its queue keeps
-- finished records (keep_finished_seconds) and its record has not expired (a record older than
-- its expiry that no ack has trimmed yet reads unknown); otherwise nothing here tells it from
-- one never enqueued: done markers are keyed by idempotency key, not by job id.
local K_ENQUEUED, K_FIN, K_FINX = KEYS[16], KEYS[17], KEYS[18]
local now = now_ms()
local out = {now}

-- The envelope's task and enqueued_at, without its payload ('' when it is not a JSON object).
local function envelope_fields(raw)
  local env = dec(raw)
  if type(env) ~= 'table' then return '', '' end
  local task, at = env.task, env.enqueued_at
  if type(task) ~= 'string' then task = '' end
  if type(at) ~= 'number' then at = '' else at = string.format('%.6f', at) end
  return task, at
end

-- The newest failure of a history list (JSON), '' when there is none.
local function failure_last(raw)
  local hist = dec(raw)
  if type(hist) ~= 'table' or hist[1] == nil then return '' end
  return cjson.encode(hist[#hist])
end

for _, id in ipairs(ARGV) do
  local st = st_get(redis.call('HGET', K_STATE, id))
  local state, prio, attempts, deliveries = 'unknown', '', '', ''
  local task, enqueued, due, worker, lease, failure, letter = '', '', '', '', '', '', ''
  if st then
    prio, attempts, deliveries = st.p, st.a, st.d
    task, enqueued = envelope_fields(redis.call('HGET', K_ENV, id))
    failure = failure_last(redis.call('HGET', K_HIST, id))
    local fl = fl_get(redis.call('HGET', K_INFLIGHT, id))
    if fl then
      state, worker = 'running', fl.w
      lease = redis.call('ZSCORE', K_LEASES, id) or ''
    else
      due = redis.call('ZSCORE', K_DELAYED, id) or ''
      if due ~= '' and tonumber(due) > now then state = 'scheduled' else state = 'waiting' end
    end
  elseif redis.call('ZSCORE', K_DLQ, id) then
    state = 'dead_lettered'
    letter = redis.call('HGET', K_DLQDATA, id) or ''
  else
    local until_ = redis.call('ZSCORE', K_FINX, id)
    if until_ and tonumber(until_) > now then
      letter = redis.call('HGET', K_FIN, id) or ''
      if letter ~= '' then state = 'done' end
    end
    local at = redis.call('ZSCORE', K_ENQUEUED, id)
    if at then enqueued = string.format('%.3f', tonumber(at) / 1000) end
  end
  out[#out + 1] = state
  out[#out + 1] = prio
  out[#out + 1] = tostring(attempts)
  out[#out + 1] = tostring(deliveries)
  out[#out + 1] = task
  out[#out + 1] = enqueued
  out[#out + 1] = due
  out[#out + 1] = worker
  out[#out + 1] = lease
  out[#out + 1] = failure
  out[#out + 1] = letter
end
return out
