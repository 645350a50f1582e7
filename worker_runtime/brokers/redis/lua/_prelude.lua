-- workerfleet Lua prelude: prepended to every engine script by worker_runtime/brokers/redis/scripts.py.
-- KEYS layout (worker_runtime.brokers.redis.keys.QueueKeys.script_keys), all under the hash tag {wf:Q}:
--   1-3 ready streams high/normal/low (group "workers"), 4 env (hash), 5 state (hash),
--   6 history (hash), 7 leases (zset), 8 delayed (zset), 9 dlq (zset), 10 dlq:data (hash),
--   11 counters (hash), 12 workers (hash), 13 workers:expiry (zset), 14 ratelimit (hash),
--   15 inflight (hash), 16.. per-call keys ({wf:Q}:enqueued, {wf:Q}:idem:<k>, {wf:Q}:done:<k>,
--   {wf:Q}:ratelimit[:<name>]) given by index.
-- Times are Redis server milliseconds.
-- state value   "prio|attempts|deliveries|lost"          (every live job)
-- inflight value "token|prio|stream entry id|worker"     (only while delivered; token fences;
--                token = "<epoch>:<n>", see fence_epoch)
-- Plain delimited strings, not JSON: cjson costs several microseconds per job on the hot path.
local K_READY = {high = KEYS[1], normal = KEYS[2], low = KEYS[3]}
local PRIO = {'high', 'normal', 'low'}
local K_ENV, K_STATE, K_HIST, K_LEASES = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local K_DELAYED, K_DLQ, K_DLQDATA, K_COUNTERS = KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local K_WORKERS, K_WEXP, K_RL, K_INFLIGHT = KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local GROUP = 'workers'
-- The consumer that keeps the pending entries of a worker whose consumer is deleted
-- (consumer_remove): no worker id contains ':'.
local ORPHANS = 'workerfleet:orphaned'
local HISTORY_KEEP = 25

-- Lua's unpack() fails at about 8,000 values ("too many results to unpack"), so a list is never
-- unpacked whole: call_chunked / hmget_chunked pass it CHUNK values at a time (CHUNK is even,
-- so ZADD/HSET score-member and field-value pairs never split). Every list the scripts hand to
-- a command goes through them: renewals carry up to a worker's concurrency (10,000).
local CHUNK = 1000

-- redis.call(cmd, key[, arg], list...) in slices; returns the sum of the integer replies.
local function call_chunked(cmd, key, list, arg)
  local n, total = #list, 0
  for s = 1, n, CHUNK do
    local e = math.min(n, s + CHUNK - 1)
    if arg then
      total = total + redis.call(cmd, key, arg, unpack(list, s, e))
    else
      total = total + redis.call(cmd, key, unpack(list, s, e))
    end
  end
  return total
end

-- HMGET key list... in slices; one reply value per list entry (false where absent).
local function hmget_chunked(key, list)
  local n = #list
  if n <= CHUNK then return redis.call('HMGET', key, unpack(list)) end
  local out = {}
  for s = 1, n, CHUNK do
    local part = redis.call('HMGET', key, unpack(list, s, math.min(n, s + CHUNK - 1)))
    for i = 1, #part do out[#out + 1] = part[i] end
  end
  return out
end

-- The patterns of a state and an inflight value; the hot loops (fetch, ack) match them inline,
-- without the table st_get / fl_get build for every job.
local ST_PATTERN = '^(%a+)|(%d+)|(%d+)|(%d+)$'
local FL_PATTERN = '^([^|]+)|(%a+)|([^|]*)|(.*)$'

local function st_get(raw)
  if not raw then return nil end
  local p, a, d, l = string.match(raw, ST_PATTERN)
  if not p then return nil end
  return {p = p, a = tonumber(a), d = tonumber(d), l = tonumber(l)}
end

-- The state value of a table st_get built (fetch's hot loop writes the same text inline).
local function st_put(st)
  return st.p .. '|' .. st.a .. '|' .. st.d .. '|' .. st.l
end

local function fl_get(raw)
  if not raw then return nil end
  local t, p, e, w = string.match(raw, FL_PATTERN)
  if not t then return nil end
  return {t = t, p = p, e = e, w = w}
end

-- Delete the entries of ready stream `stream` that `list` (entry ids) just acknowledged, and any
-- older ones. Trimming below the group's oldest pending entry (XTRIM MINID) costs about one
-- XDEL, where an XDEL per id walks each id's stream node to it (~3 us a job, the costliest
-- command of an ack). Safe because every entry below the oldest pending one is acknowledged:
-- delivery is in id order, entries are only ever added at the end, and a deleted consumer's
-- pending entries move to ORPHANS first (consumer_remove), so none leaves the group's pending
-- list while its job is leased. Ids above the floor (acknowledged out of order) are XDELed.
local function entries_remove_acked(stream, list)
  local floor = redis.call('XPENDING', stream, GROUP)[2]
  local match, rest = string.match, {}
  if floor then
    redis.call('XTRIM', stream, 'MINID', floor)
    local fm, fs = match(floor, '^(%d+)-(%d+)$')
    fm, fs = tonumber(fm), tonumber(fs)
    for _, id in ipairs(list) do
      local m, q = match(id, '^(%d+)-(%d+)$')
      m = tonumber(m)
      if m > fm or (m == fm and tonumber(q) > fs) then rest[#rest + 1] = id end
    end
  else
    -- nothing pending: every delivered entry is acknowledged, the newest of the list included
    local tm, ts, top = -1, -1, nil
    for _, id in ipairs(list) do
      local m, q = match(id, '^(%d+)-(%d+)$')
      m, q = tonumber(m), tonumber(q)
      if m > tm or (m == tm and q > ts) then tm, ts, top = m, q, id end
    end
    redis.call('XTRIM', stream, 'MINID', top)
    rest[1] = top
  end
  if #rest > 0 then call_chunked('XDEL', stream, rest) end
end

-- Delete worker `worker`'s consumer from every ready stream's group, first moving its pending
-- entries to ORPHANS (XCLAIM JUSTID: no delivery counted): DELCONSUMER alone would drop them
-- from the group's pending list while their jobs stay leased, and entries_remove_acked would
-- then trim them. The jobs' leases stay the truth: they are reclaimed when those expire.
-- One XCLAIM per entry with its own IDLE: a claim resets an entry's time since delivery, the
-- running time the in-flight list shows (it read 0 s for a gone worker's hour-long job). A
-- worker leaves rarely; this is not on the hot path.
local function consumer_remove(worker)
  for _, p in ipairs(PRIO) do
    local stream = K_READY[p]
    for _ = 1, 20 do  -- bounded: a worker holds at most its concurrency (10,000)
      local page = redis.pcall('XPENDING', stream, GROUP, '-', '+', CHUNK, worker)
      if type(page) ~= 'table' or page.err or #page == 0 then break end
      for _, row in ipairs(page) do
        redis.call('XCLAIM', stream, GROUP, ORPHANS, 0, row[1], 'IDLE', row[3], 'JUSTID')
      end
      if #page < CHUNK then break end
    end
    redis.pcall('XGROUP', 'DELCONSUMER', stream, GROUP, worker)
  end
end

-- Acknowledge and delete a delivered job's stream entry: it leaves the in-flight state.
local function entry_remove(fl)
  if fl.e ~= '' and K_READY[fl.p] then
    redis.call('XACK', K_READY[fl.p], GROUP, fl.e)
    redis.call('XDEL', K_READY[fl.p], fl.e)
  end
end

-- Batched calls pack their per-job values into one ARGV string: records separated by \30 (RS),
-- fields by \31 (US). Valid JSON never contains raw control characters, and ids are checked
-- client-side, so the separators cannot occur inside a value. Iterate with
-- string.gmatch(packed, REC[n]): one match per record, its n fields as captures, no tables.
-- REC[n] is n-1 times '([^\31\30]*)\31' then '([^\30]*)', written out: the prelude runs on
-- every call, and building these strings there cost about a third of its time.
local REC = {
  '([^\30]*)',
  '([^\31\30]*)\31([^\30]*)',
  '([^\31\30]*)\31([^\31\30]*)\31([^\30]*)',
  '([^\31\30]*)\31([^\31\30]*)\31([^\31\30]*)\31([^\30]*)',
  '([^\31\30]*)\31([^\31\30]*)\31([^\31\30]*)\31([^\31\30]*)\31([^\30]*)',
  '([^\31\30]*)\31([^\31\30]*)\31([^\31\30]*)\31([^\31\30]*)\31([^\31\30]*)\31([^\30]*)'
}

-- The fencing epoch: the first 8 hex digits of the run id and of the replication id of the
-- server handing out tokens (each 40 random hex digits). The counter (counters.fence) is
-- replicated data, so a promoted replica that missed the last writes, or a server restarted
-- from a file older than its last writes, would count the same numbers again; the epoch
-- differs then (a new process has a new run id, a promotion makes a new replication id), so a
-- token is never issued twice and a stale one never matches.
-- INFO is in ACL's @dangerous category: a user refused it gets an epoch from the server clock
-- instead ('t' + seconds and microseconds of this call), unique to the call unless a clock goes
-- back, so a token is still never issued twice (docs/queue-engine.md, "Fencing").
local function fence_epoch()
  local info = redis.pcall('INFO', 'server', 'replication')
  if type(info) ~= 'string' then
    local t = redis.call('TIME')
    return 't' .. t[1] .. string.format('%06d', tonumber(t[2]))
  end
  -- a plain find, then a match anchored there: an unanchored pattern scanned the 2 KB reply
  -- position by position (about 7 us of every fetch that hands out tokens)
  local function hex_after(name)
    local at = string.find(info, name, 1, true)
    if not at then return '' end
    return string.match(info, '^%x+', at + #name) or ''
  end
  return string.sub(hex_after('\nrun_id:'), 1, 8) .. string.sub(hex_after('\nmaster_replid:'), 1, 8)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function dec(raw)
  if not raw then return nil end
  local ok, v = pcall(cjson.decode, raw)
  if ok then return v end
  return nil
end

-- Append one failure (client JSON object) to the job's history, stamping server-side facts.
local function history_append(id, failure_json, st, now)
  local f = dec(failure_json) or {message = tostring(failure_json)}
  f.at = now / 1000
  f.attempt = st.a
  f.delivery = st.d
  local hist = dec(redis.call('HGET', K_HIST, id))
  if type(hist) ~= 'table' or hist[1] == nil then hist = {} end
  hist[#hist + 1] = f
  if #hist > HISTORY_KEEP then table.remove(hist, 2) end  -- keep the first failure and the latest
  redis.call('HSET', K_HIST, id, cjson.encode(hist))
end

-- Apply DLQ retention (age, then length); bounded work per call.
local function dlq_trim(now, max_len, retention_ms)
  if retention_ms > 0 then
    local old = redis.call('ZRANGEBYSCORE', K_DLQ, '-inf', now - retention_ms, 'LIMIT', 0, 500)
    if #old > 0 then
      call_chunked('ZREM', K_DLQ, old)
      call_chunked('HDEL', K_DLQDATA, old)
    end
  end
  if max_len > 0 then
    local n = redis.call('ZCARD', K_DLQ)
    if n > max_len then
      local popped = redis.call('ZPOPMIN', K_DLQ, math.min(n - max_len, 500))
      local ids = {}
      for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
      if #ids > 0 then call_chunked('HDEL', K_DLQDATA, ids) end
    end
  end
end

-- Is s valid UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF)? Pure ASCII, the
-- usual case, is decided by one find.
local function utf8_valid(s)
  local i, n = string.find(s, '[\128-\255]'), #s
  while i do
    local c = string.byte(s, i)
    local len, lo, hi = 0, 0x80, 0xBF
    if c >= 0xC2 and c <= 0xDF then len = 1
    elseif c >= 0xE0 and c <= 0xEF then
      len = 2
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 3
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else return false end
    if i + len > n then return false end
    local c2 = string.byte(s, i + 1)
    if c2 < lo or c2 > hi then return false end
    for j = i + 2, i + len do
      local cj = string.byte(s, j)
      if cj < 0x80 or cj > 0xBF then return false end
    end
    i = string.find(s, '[\128-\255]', i + len + 1)
  end
  return true
end

local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

local function b64_encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = string.byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {math.floor(n / 262144), math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64}
    local chunk = ''
    for k = 1, 4 do chunk = chunk .. string.sub(B64, q[k] + 1, q[k] + 1) end
    if not b then chunk = string.sub(chunk, 1, 2) .. '=='
    elseif not c then chunk = string.sub(chunk, 1, 3) .. '=' end
    out[#out + 1] = chunk
  end
  return table.concat(out)
end

-- The failures of an earlier dead letter of the same job id (`older`: its record), then this
-- one's (`hist`: JSON list), kept like history_append keeps them. Only when an id comes back
-- while its dead letter waits (re-enqueued, re-published), so cjson's cost is no concern here.
local function history_merge(older, hist)
  local prev = dec(older)
  if type(prev) ~= 'table' or type(prev.history) ~= 'table' or prev.history[1] == nil then
    return hist
  end
  local merged = {}
  for _, f in ipairs(prev.history) do merged[#merged + 1] = f end
  local now_list = dec(hist)
  if type(now_list) == 'table' then
    for _, f in ipairs(now_list) do merged[#merged + 1] = f end
  end
  while #merged > HISTORY_KEEP do table.remove(merged, 2) end  -- the first and the latest
  return cjson.encode(merged)
end

-- Move job `id` (state st; already out of the streams, leases and inflight) into the DLQ with
-- its full failure metadata, then forget its live state. An envelope that is not UTF-8 is
-- kept as "envelope_base64" (its exact bytes): the record stays valid JSON every reader parses.
-- A dead letter the id already has (an earlier run of a job id that came back) is replaced,
-- its failures kept ahead of this run's: overwriting them lost the first run's history.
local function dlq_insert(id, st, reason, worker, now, max_len, retention_ms)
  local env = redis.call('HGET', K_ENV, id) or ''
  local hist = redis.call('HGET', K_HIST, id)
  if not hist or hist == '{}' then hist = '[]' end
  local older = redis.call('HGET', K_DLQDATA, id)
  if older then hist = history_merge(older, hist) end
  local env_field = ',"envelope":' .. cjson.encode(env)
  if not utf8_valid(env) then
    env_field = ',"envelope":"","envelope_base64":"' .. b64_encode(env) .. '"'
  end
  local rec = '{"id":' .. cjson.encode(id) .. ',"reason":' .. cjson.encode(reason)
    .. ',"priority":' .. cjson.encode(st.p or 'normal')
    .. ',"attempts":' .. tostring(st.a or 0) .. ',"deliveries":' .. tostring(st.d or 0)
    .. ',"lost":' .. tostring(st.l or 0) .. ',"worker":' .. cjson.encode(worker or '')
    .. ',"dead_lettered_at":' .. tostring(now / 1000)
    .. ',"history":' .. hist .. env_field .. '}'
  redis.call('HSET', K_DLQDATA, id, rec)
  redis.call('ZADD', K_DLQ, now, id)
  redis.call('HDEL', K_ENV, id)
  redis.call('HDEL', K_STATE, id)
  redis.call('HDEL', K_HIST, id)
  redis.call('HINCRBY', K_COUNTERS, 'dead_lettered', 1)
  dlq_trim(now, max_len, retention_ms)
end

-- Token bucket (capacity = jobs, refill jobs per per_ms): how many of `want` may start now,
-- and ms until the next token. Does not take tokens; bucket_take does.
local function bucket_peek(key, cap, per_ms, now)
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(b[1]) or cap
  local ts = tonumber(b[2]) or now
  local rate = cap / per_ms
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
  return tokens, rate
end

local function bucket_take(key, tokens, taken, now, per_ms)
  redis.call('HSET', key, 'tokens', tostring(tokens - taken), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(per_ms * 2) + 1000)
end

-- XREADGROUP that creates the group at id 0 (so earlier entries are delivered) when missing.
local function read_new(stream, worker, n)
  local r = redis.pcall('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', n, 'STREAMS', stream, '>')
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'NOGROUP') then
      redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
      r = redis.call('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', n, 'STREAMS', stream, '>')
    else
      error(r.err)
    end
  end
  if not r then return {} end
  return r[1][2]
end

-- The group's last delivered id of a stream ('0-0' when there is no group yet).
local function last_delivered(stream)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) ~= 'table' or groups.err then return '0-0' end
  for _, g in ipairs(groups) do
    local name, last = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == GROUP then return last end
  end
  return '0-0'
end
