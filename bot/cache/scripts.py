"""Lua scripts: each turns several Redis commands into one atomic round trip."""

# Start handling a message. KEYS: lock, dedup, session, channel config, active set.
# ARGV: lock token, lock ttl ms, has dedup (1/0), dedup ttl s, rate key template,
#       rate window s, now (s), active window s, active member, context key template,
#       context length, delivery lease s.
# Returns {'locked'} | {'duplicate'} | {'delivering'} |
#         {'ok', session fields (flat), config json or '', rate count, rate ttl,
#          context as one JSON array, newest first, or '', 1 if an unfinished claim
#          was taken over else 0}.
# Only 'done' (the reply reached the platform) marks a duplicate. An 'answered:<time>'
# claim younger than the delivery lease is a reply another worker is sending: the
# caller waits, as for a lock, until it is done. The lock is taken before the event is
# claimed, so a 'processing' claim found here belongs to a holder that is gone
# (crashed, or so slow its lock expired), an older 'answered' one to a worker that died
# before its reply went out, and an 'unfinished' one to a handling that failed with its
# outcome unknown: each is taken over, and the service told so, because Postgres may
# hold the exchange whose reply never went out. Should a slow holder still finish, the
# database's unique key stores the exchange once and the later of the two gets nothing.
BEGIN = r"""
local token = ARGV[1]
if not redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= token then return {'locked'} end
end
local now = tonumber(ARGV[7])
local taken_over = 0
if ARGV[3] == '1' then
  local claim = redis.call('GET', KEYS[2])
  if claim == 'done' then
    redis.call('DEL', KEYS[1])
    return {'duplicate'}
  end
  if claim and string.sub(claim, 1, 9) == 'answered:'
      and now - tonumber(string.sub(claim, 10)) < tonumber(ARGV[12]) then
    redis.call('DEL', KEYS[1])
    return {'delivering'}
  end
  if claim then taken_over = 1 end
  redis.call('SET', KEYS[2], 'processing', 'EX', ARGV[4])
end
redis.call('ZADD', KEYS[5], now, ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[8]))
redis.call('EXPIRE', KEYS[5], ARGV[8])
local session = redis.call('HGETALL', KEYS[3])
local config = redis.call('GET', KEYS[4]) or ''
local count, ttl, context = 0, 0, ''
local fields = {}
for i = 1, #session, 2 do fields[session[i]] = session[i + 1] end
if fields['user_id'] then
  local rate = string.gsub(ARGV[5], '{user_id}', fields['user_id'])
  count = redis.call('INCR', rate)
  ttl = redis.call('TTL', rate)
  if ttl < 0 then
    redis.call('EXPIRE', rate, ARGV[6])
    ttl = tonumber(ARGV[6])
  end
end
if fields['conversation_id'] then
  local key = string.gsub(ARGV[10], '{conversation_id}', fields['conversation_id'])
  local items = redis.call('LRANGE', key, 0, tonumber(ARGV[11]) - 1)
  -- One string, not a list: one reply to parse and one json.loads on the client.
  if #items > 0 then context = '[' .. table.concat(items, ',') .. ']' end
end
return {'ok', session, config, count, ttl, context, taken_over}
"""

# Count one message against a user's per-minute limit; never leaves a key without TTL.
# KEYS: rate key. ARGV: window s. Returns {count, ttl}.
RATE = r"""
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""

# Finish handling a message after the Postgres commit: its event becomes 'answered'
# (stored, the reply handed to the adapter); events this worker has delivered since
# its last call become 'done' (bot/cache/delivery.py).
# KEYS: session, context, lock, dedup, channel config.
# ARGV: lock token, session ttl, context ttl, context length, context mode
#       ('replace' | 'append' | 'keep'), has dedup, dedup ttl, config json or '',
#       config ttl, session fields as JSON or '', now (s), the number n of delivered
#       events, their n dedup keys, then context items newest first.
FINISH = r"""
if ARGV[10] ~= '' then
  local fields = cjson.decode(ARGV[10])
  local flat = {}
  for k, v in pairs(fields) do
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  redis.call('HSET', KEYS[1], unpack(flat))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local delivered = tonumber(ARGV[12])
for i = 13, 12 + delivered do redis.call('SET', ARGV[i], 'done', 'XX', 'EX', ARGV[7]) end
local first = 13 + delivered
local mode = ARGV[5]
if mode == 'replace' then
  redis.call('DEL', KEYS[2])
  if #ARGV >= first then redis.call('RPUSH', KEYS[2], unpack(ARGV, first)) end
elseif mode == 'append' then
  for i = #ARGV, first, -1 do redis.call('LPUSHX', KEYS[2], ARGV[i]) end
end
if mode ~= 'keep' then
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
-- A worker that lost the race for its event (it stored nothing) must not undo 'done'.
if ARGV[6] == '1' and redis.call('GET', KEYS[4]) ~= 'done' then
  redis.call('SET', KEYS[4], 'answered:' .. ARGV[11], 'EX', ARGV[7])
end
if ARGV[8] ~= '' then redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[9]) end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 1
"""

# Give up handling a message: release the lock and forget the event, so that a
# redelivery is processed; or, after a failure whose outcome is unknown (a commit may
# have gone through), mark the claim 'unfinished' for a redelivery to take over. Without
# the lock the claim is left alone: it may be another worker's by now, and one of ours
# left behind is taken over anyway.
# KEYS: lock, dedup. ARGV: lock token, has dedup, '' to forget or the unfinished TTL s.
ABORT = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '1' and ARGV[3] == '' then redis.call('DEL', KEYS[2]) end
  if ARGV[2] == '1' and ARGV[3] ~= '' then
    redis.call('SET', KEYS[2], 'unfinished', 'EX', ARGV[3])
  end
  redis.call('DEL', KEYS[1])
end
return 1
"""

# Renew a user's lock while its holder works. KEYS: lock. ARGV: lock token, ttl ms.
# Returns 1 if renewed, 0 if the lock is no longer ours.
EXTEND = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
