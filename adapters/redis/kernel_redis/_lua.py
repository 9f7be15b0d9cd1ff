"""The job store's Lua scripts: each call of the port is one script, so atomic.

Redis runs a script with nothing else in between, on every client: that is
what makes a claim, an enqueue with its slot and dedup key, or a
completion plus the next claim one step across processes (the same role
``FOR UPDATE SKIP LOCKED`` plays in the PostgreSQL adapter; BullMQ and
Sidekiq Pro do their moves in Lua for the same reason). ``ARGV[1]`` is
always the key prefix; scripts compute the other key names from it (the
kernel's keys are listed in ``adapters/redis/README.md``), so the store
needs a single Redis, not a Redis Cluster.

Keys under the prefix ``P``:

- ``P job:<id>``: the job's hash (`kernel_redis._records`);
- ``P q:<queue>:<priority>``: a sorted set per queue and priority level of
  its queued jobs due at their ``run_at`` (``run_at >= enqueued_at``),
  members ``rk .. tail`` in claim order by bytes (all scores 0);
  ``P lv:<queue>``: that queue's levels (score = priority);
  ``P early:<queue>``: its queued jobs enqueued for a time already past
  (``run_at < enqueued_at``), which age from ``enqueued_at``;
  ``P queues``: the queues with queued jobs;
- ``P running``: running jobs by lease end (score, microseconds);
- ``P all``, ``P st:<state>``, ``P jq:<queue>``: ids (lexical), for listing;
  ``P fin:<state>``: finished jobs by finish time, for purging;
- ``P dedup``: dedup key -> the live job holding it; ``P seq``: a counter;
- ``P slots``: claimed schedule slots (score fire time, member
  ``sortable fire time .. schedule``); ``P sched``: schedule state;
- ``P wake``: the channel every change that makes a job claimable (or
  moves its due time) publishes the queue's name on.

**The aged claim.** Within one level, a job due at its ``run_at`` has
waited at least as long as every job behind it in (run_at, enqueued_at,
seq) order, so its aged priority is at least theirs: the best ``limit``
jobs of a claim are among the first ``limit`` due members of each level
plus the due early jobs, which the script ranks exactly as
`kernel.storage.base.claim_order` does (the memory store's per-level heaps
and the SQLite store's ``aged_candidates`` make the same argument).
Without aging, levels are read from the highest down and reading stops
once ``limit`` candidates are found. Aging arithmetic uses Lua's doubles:
exact for times between 1685 and 2255 (the order itself is exact always).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BURY",
    "CANCEL",
    "CLAIM_SLOT",
    "COMPLETE_CLAIM",
    "ENQUEUE",
    "EXPIRED",
    "HEARTBEAT",
    "KV_CLEAR",
    "KV_DELETE",
    "KV_PUT",
    "KV_RANGE",
    "LIST",
    "NEXT_DUE",
    "PURGE",
    "REQUEUE",
    "REQUEUE_EXPIRED",
    "RETRY_DEAD",
]

_COMMON: Final = """
local P = ARGV[1]
local function job_key(id) return P .. 'job:' .. id end

local function queued_entry(key)
  local f = redis.call('HMGET', key, 'queue', 'priority', 'rk', 'tail')
  return f[1], f[2], f[3] .. f[4], f[3] < string.sub(f[4], 1, 19)
end

local function forget_queue_if_empty(queue)
  if redis.call('EXISTS', P .. 'lv:' .. queue) == 0
      and redis.call('EXISTS', P .. 'early:' .. queue) == 0 then
    redis.call('SREM', P .. 'queues', queue)
  end
end

local function index_queued(queue, prio, m, early)
  if early then
    redis.call('ZADD', P .. 'early:' .. queue, 0, m)
  else
    redis.call('ZADD', P .. 'q:' .. queue .. ':' .. prio, 0, m)
    redis.call('ZADD', P .. 'lv:' .. queue, prio, prio)
  end
  redis.call('SADD', P .. 'queues', queue)
end

local function unindex_queued(queue, prio, m, early)
  if early then
    redis.call('ZREM', P .. 'early:' .. queue, m)
  else
    local level = P .. 'q:' .. queue .. ':' .. prio
    redis.call('ZREM', level, m)
    if redis.call('EXISTS', level) == 0 then
      redis.call('ZREM', P .. 'lv:' .. queue, prio)
    end
  end
end

local function set_state(key, id, old, new)
  redis.call('ZREM', P .. 'st:' .. old, id)
  redis.call('ZADD', P .. 'st:' .. new, 0, id)
  redis.call('HSET', key, 'state', new)
end

local function finish(key, id, old, new, finished)
  set_state(key, id, old, new)
  redis.call('HSET', key, 'finished_at', finished)
  redis.call('HDEL', key, 'lease_expires_at')
  redis.call('ZADD', P .. 'fin:' .. new, finished, id)
  local dedup = redis.call('HGET', key, 'dedup_key')
  if dedup and redis.call('HGET', P .. 'dedup', dedup) == id then
    redis.call('HDEL', P .. 'dedup', dedup)
  end
end

local function held(key, worker)
  local f = redis.call('HMGET', key, 'state', 'worker')
  return f[1] == 'running' and f[2] == worker
end

local function requeue(key, id)
  set_state(key, id, 'running', 'queued')
  redis.call('ZREM', P .. 'running', id)
  redis.call('HDEL', key, 'worker', 'lease_expires_at')
  local queue, prio, m, early = queued_entry(key)
  index_queued(queue, prio, m, early)
  redis.call('PUBLISH', P .. 'wake', queue)
end
"""

_CLAIM_FUNCTIONS: Final = """
local function decode_time(s)
  local v = tonumber(string.sub(s, 2))
  if string.sub(s, 1, 1) == '0' then v = v - 1e18 end
  return v
end

local function aged(prio, m, now, aging)
  local due = decode_time(string.sub(m, 1, 19))
  local enqueued = decode_time(string.sub(m, 20, 38))
  if enqueued > due then due = enqueued end
  local waited = now - due
  if waited <= 0 then return prio end
  local q = math.floor(waited / aging)
  if q * aging > waited then q = q - 1 elseif (q + 1) * aging <= waited then q = q + 1 end
  return prio + q
end

local function complete(id, worker, finished)
  local key = job_key(id)
  if not held(key, worker) then return false end
  redis.call('ZREM', P .. 'running', id)
  finish(key, id, 'running', 'succeeded', finished)
  return true
end

local function claim(queue, worker, now_s, bound, until_s, limit, aging_s)
  local now = tonumber(now_s)
  local aging = nil
  if aging_s ~= '' then aging = tonumber(aging_s) end
  local candidates = {}
  local levels = redis.call('ZRANGE', P .. 'lv:' .. queue, 0, -1)
  local found = 0
  for i = #levels, 1, -1 do
    if aging == nil and found >= limit then break end
    local level = levels[i]
    local prio = tonumber(level)
    local members = redis.call('ZRANGEBYLEX', P .. 'q:' .. queue .. ':' .. level,
      '-', '(' .. bound, 'LIMIT', 0, limit)
    for _, m in ipairs(members) do
      local rank = prio
      if aging then rank = aged(prio, m, now, aging) end
      candidates[#candidates + 1] = {rank, string.sub(m, 1, 54), m, level}
      found = found + 1
    end
  end
  local early = redis.call('ZRANGEBYLEX', P .. 'early:' .. queue, '-', '(' .. bound)
  for _, m in ipairs(early) do
    local prio = tonumber(redis.call('HGET', job_key(string.sub(m, 55)), 'priority'))
    local rank = prio
    if aging then rank = aged(prio, m, now, aging) end
    candidates[#candidates + 1] = {rank, string.sub(m, 1, 54), m, false}
  end
  table.sort(candidates, function(a, b)
    if a[1] ~= b[1] then return a[1] > b[1] end
    return a[2] < b[2]
  end)
  local claimed = {}
  for i = 1, math.min(limit, #candidates) do
    local c = candidates[i]
    local id = string.sub(c[3], 55)
    local key = job_key(id)
    if c[4] then
      unindex_queued(queue, c[4], c[3], false)
    else
      unindex_queued(queue, nil, c[3], true)
    end
    set_state(key, id, 'queued', 'running')
    redis.call('HSET', key, 'worker', worker, 'lease_expires_at', until_s)
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('ZADD', P .. 'running', until_s, id)
    claimed[#claimed + 1] = redis.call('HGETALL', key)
  end
  if #claimed > 0 then forget_queue_if_empty(queue) end
  return claimed
end
"""

ENQUEUE: Final = (
    _COMMON
    + """
-- ARGV: P, id, queue, priority, rk, ek, slot member, slot score, dedup key, fields...
local id, queue, dedup = ARGV[2], ARGV[3], ARGV[9]
local key = job_key(id)
if redis.call('EXISTS', key) == 1 then return {'conflict'} end
if ARGV[7] ~= '' then
  if redis.call('ZADD', P .. 'slots', 'NX', ARGV[8], ARGV[7]) == 0 then return {'slot'} end
end
if dedup ~= '' then
  local holder = redis.call('HGET', P .. 'dedup', dedup)
  if holder then return {'held', redis.call('HGETALL', job_key(holder))} end
end
local seq = redis.call('INCR', P .. 'seq')
local tail = ARGV[6] .. string.format('%016d', seq) .. id
redis.call('HSET', key, 'seq', seq, 'rk', ARGV[5], 'tail', tail, unpack(ARGV, 10))
index_queued(queue, ARGV[4], ARGV[5] .. tail, ARGV[5] < ARGV[6])
redis.call('ZADD', P .. 'all', 0, id)
redis.call('ZADD', P .. 'st:queued', 0, id)
redis.call('ZADD', P .. 'jq:' .. queue, 0, id)
if dedup ~= '' then redis.call('HSET', P .. 'dedup', dedup, id) end
redis.call('PUBLISH', P .. 'wake', queue)
return {'ok'}
"""
)

COMPLETE_CLAIM: Final = (
    _COMMON
    + _CLAIM_FUNCTIONS
    + """
-- ARGV: P, queue, worker, now, bound, lease until, limit, aging, finished, ids...
local done = {}
for i = 10, #ARGV do
  if complete(ARGV[i], ARGV[3], ARGV[9]) then done[#done + 1] = ARGV[i] end
end
local limit = tonumber(ARGV[7])
local claimed = {}
if limit > 0 then
  claimed = claim(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], limit, ARGV[8])
end
return {done, claimed}
"""
)

HEARTBEAT: Final = (
    _COMMON
    + """
-- ARGV: P, worker, lease until, ids...
local held_ids = {}
for i = 4, #ARGV do
  local key = job_key(ARGV[i])
  if held(key, ARGV[2]) then
    redis.call('HSET', key, 'lease_expires_at', ARGV[3])
    redis.call('ZADD', P .. 'running', ARGV[3], ARGV[i])
    held_ids[#held_ids + 1] = ARGV[i]
  end
end
return held_ids
"""
)

REQUEUE: Final = (
    _COMMON
    + """
-- ARGV: P, id, worker, run_at, rk, 'retry' or 'release', error
local id = ARGV[2]
local key = job_key(id)
if not held(key, ARGV[3]) then return 0 end
redis.call('HSET', key, 'run_at', ARGV[4], 'rk', ARGV[5])
if ARGV[6] == 'retry' then
  redis.call('HSET', key, 'last_error', ARGV[7])
else
  local attempts = tonumber(redis.call('HGET', key, 'attempts'))
  if attempts > 0 then redis.call('HSET', key, 'attempts', attempts - 1) end
end
requeue(key, id)
return 1
"""
)

BURY: Final = (
    _COMMON
    + """
-- ARGV: P, id, worker, error, finished
local id = ARGV[2]
local key = job_key(id)
if not held(key, ARGV[3]) then return 0 end
redis.call('ZREM', P .. 'running', id)
finish(key, id, 'running', 'dead', ARGV[5])
redis.call('HSET', key, 'last_error', ARGV[4])
return 1
"""
)

CANCEL: Final = (
    _COMMON
    + """
-- ARGV: P, id, finished
local id = ARGV[2]
local key = job_key(id)
local state = redis.call('HGET', key, 'state')
if state == 'queued' then
  local queue, prio, m, early = queued_entry(key)
  unindex_queued(queue, prio, m, early)
  forget_queue_if_empty(queue)
elseif state == 'running' then
  redis.call('ZREM', P .. 'running', id)
else
  return false
end
finish(key, id, state, 'cancelled', ARGV[3])
return redis.call('HGETALL', key)
"""
)

EXPIRED: Final = (
    _COMMON
    + """
-- ARGV: P, now. The running jobs whose lease ended: {id, worker, seq} each.
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', ARGV[2])) do
  local f = redis.call('HMGET', job_key(id), 'worker', 'seq')
  found[#found + 1] = {id, f[1] or '', f[2] or '0'}
end
return found
"""
)

REQUEUE_EXPIRED: Final = (
    _COMMON
    + """
-- ARGV: P, now, then (id, worker, error) for each job: requeued if still
-- running under that worker with its lease ended.
local requeued = {}
local now = tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  local key = job_key(id)
  local f = redis.call('HMGET', key, 'state', 'worker', 'lease_expires_at')
  if f[1] == 'running' and f[2] == ARGV[i + 1] and tonumber(f[3]) <= now then
    redis.call('HSET', key, 'last_error', ARGV[i + 2])
    requeue(key, id)
    requeued[#requeued + 1] = id
  end
end
return requeued
"""
)

RETRY_DEAD: Final = (
    _COMMON
    + """
-- ARGV: P, id, run_at, rk
local id = ARGV[2]
local key = job_key(id)
if redis.call('HGET', key, 'state') ~= 'dead' then return false end
local dedup = redis.call('HGET', key, 'dedup_key')
if dedup and redis.call('HEXISTS', P .. 'dedup', dedup) == 1 then return {'conflict', dedup} end
redis.call('ZREM', P .. 'fin:dead', id)
set_state(key, id, 'dead', 'queued')
redis.call('HDEL', key, 'worker', 'finished_at', 'lease_expires_at')
redis.call('HSET', key, 'run_at', ARGV[3], 'rk', ARGV[4], 'attempts', 0)
if dedup then redis.call('HSET', P .. 'dedup', dedup, id) end
local queue, prio, m, early = queued_entry(key)
index_queued(queue, prio, m, early)
redis.call('PUBLISH', P .. 'wake', queue)
return {'ok', redis.call('HGETALL', key)}
"""
)

LIST: Final = (
    _COMMON
    + """
-- ARGV: P, index key (after P), after id or '', limit, queue filter or '', payloads 1/0
local index = P .. ARGV[2]
local low = '-'
if ARGV[3] ~= '' then low = '(' .. ARGV[3] end
local limit = tonumber(ARGV[4])
local queue = ARGV[5]
local fields = {'id', 'task', 'queue', 'priority', 'run_at', 'enqueued_at', 'dedup_key',
  'timeout', 'retry', 'attempts', 'state', 'worker', 'lease_expires_at', 'last_error',
  'finished_at', 'schedule', 'fire_time', 'headers'}
local jobs = {}
local chunk = limit
if queue ~= '' then chunk = 500 end
while #jobs < limit do
  local ids = redis.call('ZRANGEBYLEX', index, low, '+', 'LIMIT', 0, chunk)
  for _, id in ipairs(ids) do
    local key = job_key(id)
    low = '(' .. id
    if queue == '' or redis.call('HGET', key, 'queue') == queue then
      if ARGV[6] == '1' then
        jobs[#jobs + 1] = redis.call('HGETALL', key)
      else
        local values = redis.call('HMGET', key, unpack(fields))
        local flat = {}
        for j, name in ipairs(fields) do
          if values[j] then
            flat[#flat + 1] = name
            flat[#flat + 1] = values[j]
          end
        end
        jobs[#jobs + 1] = flat
      end
      if #jobs >= limit then break end
    end
  end
  if #ids < chunk then break end
end
return jobs
"""
)

PURGE: Final = (
    _COMMON
    + """
-- ARGV: P, state, max score ('+inf' or '(cutoff'), batch
local state = ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', P .. 'fin:' .. state, '-inf', ARGV[3],
  'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  local key = job_key(id)
  local queue = redis.call('HGET', key, 'queue')
  redis.call('DEL', key)
  redis.call('ZREM', P .. 'all', id)
  redis.call('ZREM', P .. 'st:' .. state, id)
  redis.call('ZREM', P .. 'fin:' .. state, id)
  if queue then redis.call('ZREM', P .. 'jq:' .. queue, id) end
end
return #ids
"""
)

NEXT_DUE: Final = (
    _COMMON
    + """
-- ARGV: P, queue or '' (every queue). The least rk of the queued jobs, or nil.
local queues
if ARGV[2] ~= '' then queues = {ARGV[2]} else queues = redis.call('SMEMBERS', P .. 'queues') end
local best = false
local function consider(set)
  local head = redis.call('ZRANGEBYLEX', set, '-', '+', 'LIMIT', 0, 1)[1]
  if head then
    local rk = string.sub(head, 1, 19)
    if not best or rk < best then best = rk end
  end
end
for _, queue in ipairs(queues) do
  for _, level in ipairs(redis.call('ZRANGE', P .. 'lv:' .. queue, 0, -1)) do
    consider(P .. 'q:' .. queue .. ':' .. level)
  end
  consider(P .. 'early:' .. queue)
end
return best
"""
)

CLAIM_SLOT: Final = """
-- ARGV: P, score, member
return redis.call('ZADD', ARGV[1] .. 'slots', 'NX', ARGV[2], ARGV[3])
"""

# -- key-value storage --------------------------------------------------------

KV_PUT: Final = """
-- ARGV: P, namespace, key, value
redis.call('HSET', ARGV[1] .. 'kv:' .. ARGV[2], ARGV[3], ARGV[4])
redis.call('ZADD', ARGV[1] .. 'kvk:' .. ARGV[2], 0, ARGV[3])
return 1
"""

KV_DELETE: Final = """
-- ARGV: P, namespace, key
if redis.call('HDEL', ARGV[1] .. 'kv:' .. ARGV[2], ARGV[3]) == 1 then
  redis.call('ZREM', ARGV[1] .. 'kvk:' .. ARGV[2], ARGV[3])
  return 1
end
return 0
"""

KV_CLEAR: Final = """
-- ARGV: P, namespace
local count = redis.call('HLEN', ARGV[1] .. 'kv:' .. ARGV[2])
redis.call('DEL', ARGV[1] .. 'kv:' .. ARGV[2], ARGV[1] .. 'kvk:' .. ARGV[2])
return count
"""

KV_RANGE: Final = """
-- ARGV: P, namespace, low, high, 1 to read the values too. {keys, values}
local keys = redis.call('ZRANGEBYLEX', ARGV[1] .. 'kvk:' .. ARGV[2], ARGV[3], ARGV[4])
local values = {}
if ARGV[5] == '1' then
  for start = 1, #keys, 1000 do
    local stop = math.min(start + 999, #keys)
    local got = redis.call('HMGET', ARGV[1] .. 'kv:' .. ARGV[2], unpack(keys, start, stop))
    for _, value in ipairs(got) do values[#values + 1] = value end
  end
end
return {keys, values}
"""
