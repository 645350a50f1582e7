#!lua flags=allow-oom
-- fetch: everything a worker needs to start work, in one call.
-- Touches: {wf:Q}:delayed (promote due → XADD {wf:Q}:ready:<prio>), {wf:Q}:leases (reclaim
--          expired, new leases), {wf:Q}:state (deliveries, lost), {wf:Q}:inflight (token, prio,
--          entry, worker), {wf:Q}:env (read), {wf:Q}:ready:* (XREADGROUP group "workers", XCLAIM
--          reclaimed, XACK+XDEL poison), {wf:Q}:dlq, {wf:Q}:dlq:data, {wf:Q}:history (poison →
--          DLQ), {wf:Q}:counters (fence, dead_lettered), {wf:Q}:ratelimit (when enabled).
-- ARGV: worker, count, lease ms, max deliveries, promote limit, rate jobs (0 = off), rate per
--       ms, dlq max length, dlq retention ms.
-- Order: 1 promote due delayed jobs; 2 reclaim expired leases (lost+1; lost >= max deliveries →
--        DLQ "max_deliveries" before running) — except the caller's own: a worker that is
--        fetching is alive, so its expired leases are renewed, never handed to it a second
--        time; 3 read new entries high → normal → low; 4 hand out fencing tokens
--        ("<epoch>:<counters.fence>", the epoch naming this server incarnation) and leases.
-- Returns: {now, poisoned, next event ms (-1 none), {last delivered ids} (only when empty and
--           not out of rate-limit tokens),
--           {id, token, envelope, attempts, deliveries, lost, ...} (the counts are integers or
--           decimal strings: read them with int(), never compare them as they come),
--           {id, token, ...} of the caller's own expired leases renewed by step 2 (the caller
--           releases those it no longer holds)}.
local worker = ARGV[1]
local count = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local max_deliveries = tonumber(ARGV[4])
local promote_limit = tonumber(ARGV[5])
local rl_jobs, rl_per = tonumber(ARGV[6]), tonumber(ARGV[7])
local dlq_max, dlq_ret = tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()

-- 1. promote due delayed/retry entries to their ready stream
local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, promote_limit)
if #due > 0 then
  local raws = hmget_chunked(K_STATE, due)
  for i, id in ipairs(due) do
    local st = st_get(raws[i])
    if st then redis.call('XADD', K_READY[st.p], '*', 'j', id) end
  end
  call_chunked('ZREM', K_DELAYED, due)
end

-- the global rate limit caps how many may start now
local grant = count
local tokens, rate = 0, 0
if rl_jobs > 0 then
  tokens, rate = bucket_peek(K_RL, rl_jobs, rl_per, now)
  grant = math.min(count, math.floor(tokens))
end

-- per job handed out: id, state parts (prio, attempts, deliveries, lost), stream prio, entry
local ids, sp, sa, sd, sl, prios, entries = {}, {}, {}, {}, {}, {}, {}
local poisoned = 0
local own = {}

-- 2. reclaim expired leases (a delivery that ended without a verdict: crash, kill, stop)
if grant > 0 then
  local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, grant)
  if #expired > 0 then
    local sraws = hmget_chunked(K_STATE, expired)
    local fraws = hmget_chunked(K_INFLIGHT, expired)
    call_chunked('ZREM', K_LEASES, expired)
    for i, id in ipairs(expired) do
      local st, fl = st_get(sraws[i]), fl_get(fraws[i])
      if st and fl and fl.w == worker then
        redis.call('ZADD', K_LEASES, now + lease, id)
        own[#own + 1] = id
        own[#own + 1] = fl.t
      elseif st and fl then
        st.l = st.l + 1
        if st.l >= max_deliveries then
          entry_remove(fl)
          redis.call('HDEL', K_INFLIGHT, id)
          dlq_insert(id, st, 'max_deliveries', fl.w, now, dlq_max, dlq_ret)
          poisoned = poisoned + 1
        else
          if fl.e ~= '' then
            redis.call('XCLAIM', K_READY[fl.p], GROUP, worker, 0, fl.e, 'JUSTID')
          end
          local k = #ids + 1
          ids[k], sp[k], sa[k], sd[k], sl[k] = id, st.p, st.a, st.d, st.l
          prios[k] = fl.p
          entries[k] = fl.e
        end
      elseif not st then
        redis.call('HDEL', K_INFLIGHT, id)
      end
    end
  end
end

-- 3. new entries, most urgent priority first
for _, p in ipairs(PRIO) do
  local want = grant - #ids
  if want <= 0 then break end
  local got = read_new(K_READY[p], worker, want)
  if #got > 0 then
    local jids = {}
    for i, e in ipairs(got) do jids[i] = e[2][2] end
    local raws = hmget_chunked(K_STATE, jids)
    local match = string.match
    for i, e in ipairs(got) do
      local raw = raws[i]
      local s_p, s_a, s_d, s_l
      if raw then s_p, s_a, s_d, s_l = match(raw, ST_PATTERN) end
      if s_p then
        local k = #ids + 1
        ids[k], sp[k], sa[k], sd[k], sl[k] = jids[i], s_p, s_a, s_d, s_l
        prios[k] = p
        entries[k] = e[1]
      else
        -- an entry whose job is gone (purged): drop it so it cannot block the stream
        redis.call('XACK', K_READY[p], GROUP, e[1])
        redis.call('XDEL', K_READY[p], e[1])
      end
    end
  end
end

local n = #ids
local next_event = -1
if rl_jobs > 0 then
  bucket_take(K_RL, tokens, n, now, rl_per)
  if n >= grant and grant < count then
    next_event = now + math.ceil(math.max(1 - (tokens - n), 0) / rate)
  end
end

if n == 0 then
  -- idle: tell the caller when something may become due, and where the streams stand
  -- (when the rate limit is the reason, the next token is the next event)
  if next_event < 0 then
    local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
    local l = redis.call('ZRANGE', K_LEASES, 0, 0, 'WITHSCORES')
    for _, z in ipairs({d, l}) do
      if #z > 0 then
        local t = tonumber(z[2])
        if next_event < 0 or t < next_event then next_event = t end
      end
    end
  end
  local last = {}
  -- Out of tokens, nothing can be fetched before next_event whatever arrives: no ids to wait
  -- on, so the caller sleeps until then (waiting for entries after the last delivered one
  -- woke it at once on the backlog, again and again: thousands of calls a second).
  if not (rl_jobs > 0 and grant == 0) then
    for i, p in ipairs(PRIO) do last[i] = last_delivered(K_READY[p]) end
  end
  return {now, poisoned, next_event, last, {}, own}
end

-- 4. fencing tokens and leases
local fence = redis.call('HINCRBY', K_COUNTERS, 'fence', n) - n
local epoch = fence_epoch() .. ':'
local envs = hmget_chunked(K_ENV, ids)
local zargs, sargs, fargs, out = {}, {}, {}, {}
-- Numbers become text once per call, not per job: redis.call formats a number argument with
-- snprintf("%.17g"), and so does Lua's concatenation ("%.14g"), at about a microsecond a job.
local until_s = tostring(now + lease)
local next_d = {}  -- deliveries as text → deliveries + 1 as text
local tail = '|' .. worker
for i, id in ipairs(ids) do
  local token = epoch .. (fence + i)
  local ds = sd[i]
  local d = next_d[ds]
  if not d then
    d = tostring(tonumber(ds) + 1)
    next_d[ds] = d
  end
  local z, o = 2 * i, 6 * i
  zargs[z - 1] = until_s
  zargs[z] = id
  sargs[z - 1] = id
  sargs[z] = sp[i] .. '|' .. sa[i] .. '|' .. d .. '|' .. sl[i]
  fargs[z - 1] = id
  fargs[z] = token .. '|' .. prios[i] .. '|' .. entries[i] .. tail
  out[o - 5] = id
  out[o - 4] = token
  out[o - 3] = envs[i] or ''
  out[o - 2] = sa[i]
  out[o - 1] = d
  out[o] = sl[i]
end
call_chunked('ZADD', K_LEASES, zargs)
call_chunked('HSET', K_STATE, sargs)
call_chunked('HSET', K_INFLIGHT, fargs)
return {now, poisoned, next_event, {}, out, own}
