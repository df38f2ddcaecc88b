"""Lua scripts of the Redis queue bridge: every state change is one atomic script.

Keys of one queue share the prefix ``KEYS[1] = <prefix>:q:{<queue>}`` (one hash
slot). Per queue:

- ``:job:<id>``   hash of the job (payload, attempt count, lease, dead-letter reason)
- ``:ready``      zset of leasable jobs: score ``-priority``, member
                  ``<available_at:015>:<seq:015>:<id>`` (ties sort by availability, then age)
- ``:delayed``    zset of jobs not yet available, score = available-at ms
- ``:leased``     zset of leased jobs, score = lease expiry ms
- ``:dead``       zset of dead letters in arrival order
- ``:age``        zset of pending jobs by enqueue time (``oldest_age_ms``)
- ``:idem:<key>`` idempotency key -> job id
- ``:enq:<id>``, ``:lreq:<id>``, ``:settled:<lease>``: short-lived markers that
  make a retried script (after a lost reply) return the first answer instead
  of enqueuing twice, leasing twice or reporting a stale lease.

Time is the Redis server's (``TIME``), so workers on several hosts agree on it.
"""

from __future__ import annotations

MARKER_TTL_MS = 120_000

PREAMBLE = """
local base = KEYS[1]
local READY = base .. ':ready'
local DELAYED = base .. ':delayed'
local LEASED = base .. ':leased'
local DEAD = base .. ':dead'
local AGE = base .. ':age'
local RETRIES = base .. ':retries'
local SEQ = base .. ':seq'
local MARKER_TTL = '@MARKER_TTL@'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(x) return string.format('%d', x) end
local function jkey(id) return base .. ':job:' .. id end
local function member_of(avail, seq, id)
  return string.format('%015d:%015d:%s', avail, seq, id)
end

local function make_pending(id, avail, now)
  local k = jkey(id)
  local f = redis.call('HMGET', k, 'seq', 'priority', 'enqueued_at')
  if avail > now then
    redis.call('ZADD', DELAYED, int(avail), id)
    redis.call('HDEL', k, 'member')
  else
    local m = member_of(avail, tonumber(f[1]), id)
    redis.call('ZADD', READY, int(-tonumber(f[2])), m)
    redis.call('HSET', k, 'member', m)
  end
  redis.call('ZADD', AGE, f[3], id)
  redis.call('HSET', k, 'state', 'pending', 'avail', int(avail), 'lease_id', '')
  redis.call('HDEL', k, 'worker_id')
end

local function to_dead(id, reason, now)
  local k = jkey(id)
  local m = redis.call('HGET', k, 'member')
  if m then redis.call('ZREM', READY, m) end
  redis.call('ZREM', DELAYED, id)
  redis.call('ZREM', LEASED, id)
  redis.call('ZREM', AGE, id)
  redis.call('HSET', k, 'state', 'dead', 'lease_id', '', 'dead_reason', reason, 'dead_at', int(now))
  redis.call('HDEL', k, 'member')
  redis.call('ZADD', DEAD, redis.call('INCR', base .. ':deadseq'), id)
end

local NUMERIC = {'deliveries', 'max_attempts', 'priority', 'seq', 'lease_ttl', 'enqueued_at',
  'avail'}

-- the field names whose values are not whole numbers (the scripts do integer arithmetic
-- on them: HINCRBY refuses '1.5' or '0x10', which tonumber would accept)
local function bad_numbers(k)
  local f = redis.call('HMGET', k, unpack(NUMERIC))
  local bad = {}
  for i = 1, #NUMERIC do
    if not (f[i] and string.match(f[i], '^%-?%d+$')) then bad[#bad + 1] = NUMERIC[i] end
  end
  return bad
end

-- true when the job's key is a hash holding every number the scripts rely on
local function intact(id)
  local k = jkey(id)
  if redis.call('TYPE', k).ok ~= 'hash' then return false end
  return #bad_numbers(k) == 0
end

-- A job whose stored data the queue cannot use is quarantined at once: dead-lettered with
-- the reason and the raw record, never dropped, never looped. ``entry`` is the index entry
-- (ready member or id) that pointed at it.
local function discard(id, now, entry)
  local k = jkey(id)
  local t = redis.call('TYPE', k).ok
  if t == 'hash' then
    local bad = bad_numbers(k)
    local why = 'malformed job data in redis'
    if #bad > 0 then why = why .. ': not whole numbers: ' .. table.concat(bad, ', ') end
    to_dead(id, why, now)
    return
  end
  local raw
  if t == 'string' then
    raw = redis.call('GET', k)
  elseif t == 'none' then
    raw = entry or id
  else
    raw = '<a redis ' .. t .. '>'
  end
  redis.call('DEL', k)
  redis.call('HSET', k, 'id', id, 'payload', raw, 'deliveries', '0', 'raw_type', t)
  local why = 'malformed job data in redis: the job key holds a ' .. t .. ', not a hash'
  if t == 'none' then why = 'malformed job data in redis: an index entry without its job' end
  to_dead(id, why, now)
end

local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', int(now), 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', DELAYED, id)
    if intact(id) then
      make_pending(id, tonumber(redis.call('HGET', jkey(id), 'avail')), now)
    else
      discard(id, now)
    end
  end
end


local function recover(now)
  local expired = redis.call('ZRANGEBYSCORE', LEASED, '-inf', int(now), 'LIMIT', 0, 1000)
  for _, id in ipairs(expired) do
    local k = jkey(id)
    redis.call('ZREM', LEASED, id)
    if not intact(id) then
      discard(id, now)
    else
      local f = redis.call('HMGET', k, 'deliveries', 'max_attempts', 'avail')
      local reason = 'lease expired at attempt ' .. f[1]
      redis.call('HSET', k, 'lease_id', '', 'last_error', reason)
      redis.call('HDEL', k, 'worker_id')
      if tonumber(f[1]) >= tonumber(f[2]) then
        to_dead(id, reason, now)
      else
        redis.call('INCR', RETRIES)
        make_pending(id, tonumber(f[3]), now)
      end
    end
  end
end

-- A settled lease answers a retry of the same call (same request id) with its first
-- result, and any other call with 'stale'. Returns nil when the lease is not settled.
local function settled(lease_id, req)
  if lease_id == '' then return nil end
  local s = redis.call('GET', base .. ':settled:' .. lease_id)
  if not s then return nil end
  local prefix = req .. '|'
  if string.sub(s, 1, #prefix) == prefix then return string.sub(s, #prefix + 1) end
  return 'stale'
end

local function mark_settled(lease_id, req, result)
  redis.call('SET', base .. ':settled:' .. lease_id, req .. '|' .. result, 'PX', MARKER_TTL)
end

-- 'ok', 'stale' (not held under this lease) or 'expired' (recovered now)
local function held(id, lease_id, now)
  if lease_id == '' then return 'stale' end
  -- replaced under the lease: stale here; the lease's expiry quarantines it
  if redis.call('TYPE', jkey(id)).ok ~= 'hash' then return 'stale' end
  local f = redis.call('HMGET', jkey(id), 'lease_id', 'lease_expires_at')
  if (not f[1]) or f[1] ~= lease_id then return 'stale' end
  local expires = tonumber(f[2])
  if not expires or expires <= now then
    recover(now)
    return 'expired'
  end
  return 'ok'
end

-- Why a settling call (ack, nack, dead letter) of ARGV id, lease_id, request_id stops:
-- the settled lease's answer, 'stale' or 'expired'; nil when the job is held: go on.
local function refused(now)
  local id, lease_id, req = ARGV[1], ARGV[2], ARGV[3]
  local s = settled(lease_id, req)
  if s then return s end
  local h = held(id, lease_id, now)
  if h ~= 'ok' then return h end
  return nil
end
""".replace("@MARKER_TTL@", str(MARKER_TTL_MS))


def _settling(body: str) -> str:
    """A settling script (ack, nack, dead letter): ARGV starts id, lease_id, request_id, and
    ``body`` runs only while the job is still held under that lease (``refused`` answers
    otherwise); ``body`` may use ``id``, ``lease_id``, ``req`` and ``now``."""
    return (
        "\nlocal id, lease_id, req = ARGV[1], ARGV[2], ARGV[3]\n"
        "local now = now_ms()\n"
        "local r = refused(now)\n"
        "if r then return r end" + body
    )


# ARGV: id, has_key, key, key_ttl_ms (0 = forever), payload, parameter, headers,
#       max_attempts, priority, lease_ttl_ms, delay_ms, channel, queue
ENQUEUE = """
local id = ARGV[1]
if ARGV[2] == '1' then
  local existing = redis.call('GET', base .. ':idem:' .. ARGV[3])
  if existing then return existing end
end
if not redis.call('SET', base .. ':enq:' .. id, '1', 'NX', 'PX', MARKER_TTL) then return id end
local now = now_ms()
local seq = redis.call('INCR', SEQ)
local k = jkey(id)
redis.call('HSET', k, 'id', id, 'payload', ARGV[5], 'parameter', ARGV[6], 'headers', ARGV[7],
  'max_attempts', ARGV[8], 'priority', ARGV[9], 'lease_ttl', ARGV[10],
  'enqueued_at', int(now), 'seq', int(seq), 'deliveries', '0')
if ARGV[2] == '1' then
  redis.call('HSET', k, 'idem', ARGV[3])
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', base .. ':idem:' .. ARGV[3], id, 'PX', ARGV[4])
  else
    redis.call('SET', base .. ':idem:' .. ARGV[3], id)
  end
end
make_pending(id, now + tonumber(ARGV[11]), now)
redis.call('PUBLISH', ARGV[12], ARGV[13])
return id
"""

# ARGV: batch, has_worker, worker, request_id, lease ids (batch of them)
# -> JSON {jobs: [[field, value, ...], ...], upcoming: ms until something may change or -1}
LEASE = """
local rkey = base .. ':lreq:' .. ARGV[4]
local cached = redis.call('GET', rkey)
if cached then return cached end
local now = now_ms()
recover(now)
promote(now)
local batch = tonumber(ARGV[1])
local picked = redis.call('ZRANGE', READY, 0, batch - 1)
local jobs = {}
for i, m in ipairs(picked) do
  redis.call('ZREM', READY, m)
  local id = string.match(m, '^%d+:%d+:(.+)$')
  if id and intact(id) then
    local k = jkey(id)
    redis.call('ZREM', AGE, id)
    local expires = now + tonumber(redis.call('HGET', k, 'lease_ttl'))
    redis.call('HINCRBY', k, 'deliveries', 1)
    redis.call('HSET', k, 'state', 'leased', 'lease_id', ARGV[4 + i], 'leased_at', int(now),
      'lease_expires_at', int(expires))
    redis.call('HDEL', k, 'member')
    if ARGV[2] == '1' then redis.call('HSET', k, 'worker_id', ARGV[3]) end
    redis.call('ZADD', LEASED, int(expires), id)
    jobs[#jobs + 1] = redis.call('HGETALL', k)
  elseif id then
    discard(id, now, m)
  else
    -- a member that names no job id: kept as a dead letter under a fresh id
    discard('corrupt-' .. redis.call('INCR', SEQ), now, m)
  end
end
local upcoming = -1
local d = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
if d[2] then upcoming = tonumber(d[2]) end
local l = redis.call('ZRANGE', LEASED, 0, 0, 'WITHSCORES')
if l[2] and (upcoming < 0 or tonumber(l[2]) < upcoming) then upcoming = tonumber(l[2]) end
if upcoming >= 0 then upcoming = math.max(upcoming - now, 0) end
if #jobs < batch and redis.call('ZCARD', READY) > 0 then upcoming = 0 end
local out = cjson.encode({jobs = jobs, upcoming = upcoming})
if #jobs > 0 then redis.call('SET', rkey, out, 'PX', MARKER_TTL) end
return out
"""

# ARGV: id, lease_id, request_id -> 'ok' | 'stale' | 'expired'
ACK = _settling("""
redis.call('ZREM', LEASED, id)
redis.call('DEL', jkey(id))
mark_settled(lease_id, req, 'ok')
return 'ok'
""")

# ARGV: id, lease_id, request_id, has_reason, reason, delay_ms, channel, queue
# -> 'retry' | 'dead_letter' | 'stale' | 'expired'
NACK = _settling("""
local k = jkey(id)
local f = redis.call('HMGET', k, 'deliveries', 'max_attempts')
if ARGV[4] == '1' then
  redis.call('HSET', k, 'last_error', ARGV[5])
else
  redis.call('HDEL', k, 'last_error')
end
if tonumber(f[1]) >= tonumber(f[2]) then
  local reason = ARGV[5]
  if ARGV[4] ~= '1' or reason == '' then reason = 'failed ' .. f[1] .. ' time(s)' end
  to_dead(id, reason, now)
  mark_settled(lease_id, req, 'dead_letter')
  return 'dead_letter'
end
redis.call('ZREM', LEASED, id)
redis.call('INCR', RETRIES)
make_pending(id, now + math.max(tonumber(ARGV[6]), 0), now)
mark_settled(lease_id, req, 'retry')
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 'retry'
""")

# ARGV: id, lease_id, request_id, reason -> 'ok' | 'stale' | 'expired'
MOVE_TO_DEAD = _settling("""
to_dead(id, ARGV[4], now)
mark_settled(lease_id, req, 'ok')
return 'ok'
""")

# ARGV: id, lease_id, ttl_ms (0 = the job's own lease ttl) -> new expiry ms | 'stale' | 'expired'
EXTEND = """
local id, lease_id = ARGV[1], ARGV[2]
local now = now_ms()
local h = held(id, lease_id, now)
if h ~= 'ok' then return h end
local k = jkey(id)
local ttl = tonumber(ARGV[3])
if ttl <= 0 then ttl = tonumber(redis.call('HGET', k, 'lease_ttl')) end
local expires = now + ttl
redis.call('HSET', k, 'lease_expires_at', int(expires))
redis.call('ZADD', LEASED, int(expires), id)
return expires
"""

# ARGV: limit -> [[field, value, ...], ...] oldest dead letter first
PEEK_DEAD = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', DEAD, 0, tonumber(ARGV[1]) - 1)) do
  local t = redis.call('TYPE', jkey(id)).ok
  if t == 'hash' then
    out[#out + 1] = redis.call('HGETALL', jkey(id))
  else  -- replaced after it was dead-lettered: still listed, with what is there now
    out[#out + 1] = {'id', id, 'dead_reason', 'dead letter record replaced by a redis ' .. t}
  end
end
return out
"""

# ARGV: channel, queue, all ('1'|'0'), ids... -> count
REDRIVE = """
local ids = {}
if ARGV[3] == '1' then
  ids = redis.call('ZRANGE', DEAD, 0, -1)
else
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local now = now_ms()
local count = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', DEAD, id) == 1 then
    local k = jkey(id)
    if redis.call('TYPE', k).ok == 'hash' then
      redis.call('HSET', k, 'deliveries', '0', 'seq', int(redis.call('INCR', SEQ)))
    end
    if intact(id) then
      redis.call('HDEL', k, 'dead_reason', 'dead_at')
      make_pending(id, now, now)
      count = count + 1
    else  -- a quarantined record stays a dead letter
      redis.call('ZADD', DEAD, redis.call('INCR', base .. ':deadseq'), id)
    end
  end
end
if count > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return count
"""

# -> count of dead letters deleted
PURGE_DEAD = """
local ids = redis.call('ZRANGE', DEAD, 0, -1)
for _, id in ipairs(ids) do redis.call('DEL', jkey(id)) end
redis.call('DEL', DEAD)
return #ids
"""

# -> [[job_id, lease_id, attempt, worker_id|nil, leased_at, expires_at], ...]
INSPECT = """
local now = now_ms()
recover(now)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', LEASED, 0, -1)) do
  local f = redis.call('HMGET', jkey(id), 'lease_id', 'deliveries', 'worker_id', 'leased_at',
    'lease_expires_at')
  out[#out + 1] = {id, f[1], f[2], f[3] or '', f[4], f[5], f[3] and '1' or '0'}
end
return out
"""

# -> [pending, inflight, dead_letter, retries, oldest_age_ms]
METRICS = """
local now = now_ms()
recover(now)
local pending = redis.call('ZCARD', READY) + redis.call('ZCARD', DELAYED)
local oldest = redis.call('ZRANGE', AGE, 0, 0, 'WITHSCORES')
local age = 0
if oldest[2] then age = math.max(now - tonumber(oldest[2]), 0) end
return {pending, redis.call('ZCARD', LEASED), redis.call('ZCARD', DEAD),
  tonumber(redis.call('GET', RETRIES) or '0'), age}
"""

SCRIPTS = {
    "enqueue": ENQUEUE,
    "lease": LEASE,
    "ack": ACK,
    "nack": NACK,
    "move_to_dead": MOVE_TO_DEAD,
    "extend": EXTEND,
    "peek_dead": PEEK_DEAD,
    "redrive": REDRIVE,
    "purge_dead": PURGE_DEAD,
    "inspect": INSPECT,
    "metrics": METRICS,
}


def script_source(name: str) -> str:
    """The full Lua source of script ``name`` (shared helpers + body)."""
    return PREAMBLE + SCRIPTS[name]
