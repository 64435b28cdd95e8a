"""Every Lua script of the bot: each turns several Redis commands into one atomic round trip.

A script's arguments are one frozen dataclass, written right above its Lua body. Its
fields named `*_key` are the script's KEYS, the others its ARGV, in order; the Lua
header that names them (`local lock_key = KEYS[1]`, `local lock_ttl_ms =
tonumber(ARGV[2])`, …) is generated from the dataclass (bot/cache/lua.py), so the
names in the Lua and the fields in Python cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.cache.lua import Script
from bot.cache.state import ContextUpdate

# --- BEGIN ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """Start handling a message: take the user's lock, claim the event, mark the user
        active, read session, channel config and context, and (session known) count the
        rate limit.

        Returns {'locked'} | {'duplicate'} | {'delivering'} | {'ok', session fields (flat),
        config JSON or '', rate count (0: not counted, the writer is not known), rate ttl,
        context as one JSON array (newest first) or '', 1 if an earlier claim on the event
        was taken over else 0, the writer's user id or '', the tokens counted by each quota
    counter (-1: not held)}.

        On a Redis Cluster the platform's keys (channel config, active users) and the rate
        counter live in other slots: they are left out (None, and an empty rate template),
        and read beside the script (bot/cache/claim.py).
    """

    lock_key: str
    event_key: str
    session_key: str
    author_key: str  # the writer's own session (the same as session_key unless shared)
    # The session's context: on one Redis the template of the conversation's key, with
    # '{conversation_id}' for the id the session names; on a cluster the key itself.
    context_key: str
    channel_config_key: str | None
    active_key: str | None
    token: str  # the lock's value: who holds it
    lock_ttl_ms: int
    has_event: bool  # the platform gave an event id to claim
    processing_ttl: int  # s a 'processing' claim lives (only a crashed holder's expires)
    rate_key_template: str  # with '{user_id}' for the id the session names; '': not here
    rate_window: int  # s
    now: float  # unix time
    active_window: int  # s a user counts as active
    active_member: str  # the user's platform id, in the channel's active set
    context_length: int  # messages read
    delivery_lease: int  # s an 'answered' claim is taken for a reply being sent
    # The writer's and chat's quota counters this period (bot/quotas.py); none on a
    # cluster, where they are read beside.
    quota_counters: tuple[str, ...]


# The lock is taken before the event is claimed, so any claim found here other than
# 'done' or a fresh 'answered' belongs to a handling that is gone: taken over (see
# bot/cache/events.py). Should a slow holder still finish, the database's unique key
# stores the exchange once and the later of the two gets nothing.
_BEGIN = r"""
if not redis.call('SET', lock_key, token, 'NX', 'PX', lock_ttl_ms) then
  if redis.call('GET', lock_key) ~= token then return {'locked'} end
end
local taken_over = 0
if has_event then
  local claim = redis.call('GET', event_key)
  if claim == STATE_DONE then
    redis.call('DEL', lock_key)
    return {'duplicate'}
  end
  if claim and string.sub(claim, 1, #ANSWERED_AT) == ANSWERED_AT
      and now - tonumber(string.sub(claim, #ANSWERED_AT + 1)) < delivery_lease then
    redis.call('DEL', lock_key)
    return {'delivering'}
  end
  if claim then taken_over = 1 end
  redis.call('SET', event_key, STATE_PROCESSING, 'EX', processing_ttl)
end
if active_key then mark_active(active_key, now, active_window, active_member) end
local session = redis.call('HGETALL', session_key)
local config = channel_config_key and redis.call('GET', channel_config_key) or ''
local count, ttl, context = 0, 0, ''
local fields = {}
for i = 1, #session, 2 do fields[session[i]] = session[i + 1] end
local author = fields['user_id']
if author_key ~= session_key then author = redis.call('HGET', author_key, 'user_id') end
if author and rate_key_template ~= '' then
  local rate_key = string.gsub(rate_key_template, '{user_id}', author)
  count = redis.call('INCR', rate_key)
  ttl = redis.call('TTL', rate_key)
  if ttl < 0 then
    redis.call('EXPIRE', rate_key, rate_window)
    ttl = rate_window
  end
end
if fields['conversation_id'] then
  local context_key = string.gsub(context_key, '{conversation_id}', fields['conversation_id'])
  local items = redis.call('LRANGE', context_key, 0, context_length - 1)
  -- One string, not a list: one reply to parse and one json.loads on the client.
  if #items > 0 then context = '[' .. table.concat(items, ',') .. ']' end
end
local spent = {}
for i, key in ipairs(quota_counters) do spent[i] = tonumber(redis.call('GET', key) or '-1') end
return {'ok', session, config, count, ttl, context, taken_over, author or '', spent}
"""


# --- RATE -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """Count one message against a user's per-minute limit; never leaves a key without a
    TTL. Returns {count, ttl}."""

    rate_key: str
    window: int  # s


_RATE = r"""
local count = redis.call('INCR', rate_key)
local ttl = redis.call('TTL', rate_key)
if ttl < 0 then
  redis.call('EXPIRE', rate_key, window)
  ttl = window
end
return {count, ttl}
"""


# --- ACTIVE (on a cluster, beside BEGIN) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Active:
    """Mark a user active in their channel's set. Returns 1."""

    active_key: str
    now: float  # unix time
    window: int  # s a user counts as active
    member: str  # the user's platform id


_ACTIVE = r"""
mark_active(active_key, now, window, member)
return 1
"""


# --- QUOTA (on a cluster, beside FINISH) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quota:
    """Count an exchange's tokens on one quota counter (see `add_quota`). Returns 1."""

    counter_key: str
    base: str  # its count rebuilt from Postgres, or ''
    expire_at: int  # unix time
    tokens: int


_QUOTA = r"""
add_quota(counter_key, base, expire_at, tokens)
return 1
"""


# --- FINISH ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finish:
    """After the Postgres commit: write back session, context and channel config, mark
    the event 'answered' and the events this worker delivered since its last call
    'done' (bot/cache/delivery.py), record the writer's variant of an experiment
    (`ab_test:{experiment}`), and release the lock. Returns 1."""

    session_key: str
    author_key: str  # the writer's own session (the same as session_key unless shared)
    context_key: str
    lock_key: str
    event_key: str
    channel_config_key: str | None  # None on a cluster: written beside the script
    # The experiment the exchange was in (None: none, or on a cluster: written beside).
    ab_test_key: str | None
    token: str
    session_ttl: int
    context_ttl: int
    context_length: int  # the list is trimmed to this
    context_update: ContextUpdate
    has_event: bool
    event_ttl: int
    channel_config: str | None  # JSON, when it was loaded from Postgres
    channel_config_ttl: int
    session: str | None  # the session hash's fields as JSON (bot/cache/codec.py)
    author: str | None  # shared: the writer's fields for their own session, as JSON
    ab_test_field: str  # `user:{user_id}` in the experiment's hash
    variant: str  # the writer's variant in it
    now: float
    quota_tokens: int  # the exchange's, counted by each quota counter
    # (counter key, its count rebuilt from Postgres or '', when it expires) for each
    # quota counter; on a cluster none, counted beside.
    quota: tuple[str, ...]
    delivered: tuple[str, ...]  # event keys to mark 'done' (on a cluster: none, marked beside)
    context: tuple[str, ...]  # context items (JSON), newest first


_FINISH = r"""
if session then
  hset_json(session_key, session)
  redis.call('EXPIRE', session_key, session_ttl)
end
if author then
  hset_json(author_key, author)
  redis.call('EXPIRE', author_key, session_ttl)
end
for _, key in ipairs(delivered) do
  redis.call('SET', key, STATE_DONE, 'XX', 'EX', event_ttl)
end
for i = 1, #quota, 3 do add_quota(quota[i], quota[i + 1], quota[i + 2], quota_tokens) end
if context_update == CONTEXT_UPDATE_REPLACE then
  redis.call('DEL', context_key)
  if #context > 0 then redis.call('RPUSH', context_key, unpack(context)) end
elseif context_update == CONTEXT_UPDATE_APPEND then
  for i = #context, 1, -1 do redis.call('LPUSHX', context_key, context[i]) end
end
if context_update ~= CONTEXT_UPDATE_KEEP then
  redis.call('LTRIM', context_key, 0, context_length - 1)
  redis.call('EXPIRE', context_key, context_ttl)
end
-- A worker that lost the race for its event (it stored nothing) must not undo 'done'.
if has_event and redis.call('GET', event_key) ~= STATE_DONE then
  redis.call('SET', event_key, ANSWERED_AT .. now, 'EX', event_ttl)
end
if channel_config and channel_config_key then
  redis.call('SET', channel_config_key, channel_config, 'EX', channel_config_ttl)
end
-- Experiments: the writer's variant, as the reference design records it.
if ab_test_key then redis.call('HSET', ab_test_key, ab_test_field, variant) end
if redis.call('GET', lock_key) == token then redis.call('DEL', lock_key) end
return 1
"""


# --- ABORT ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Abort:
    """Give up handling a message: release the lock and forget the event, so that a
    redelivery is processed; or, after a failure whose outcome is unknown (a commit may
    have gone through), mark the claim 'unfinished' for a redelivery to take over.
    Without the lock the claim is left alone: it may be another worker's by now, and
    one of ours left behind is taken over anyway. Returns 1."""

    lock_key: str
    event_key: str
    token: str
    has_event: bool
    unfinished_ttl: int | None  # None: forget the event


_ABORT = r"""
if redis.call('GET', lock_key) == token then
  if has_event and unfinished_ttl then
    redis.call('SET', event_key, STATE_UNFINISHED, 'EX', unfinished_ttl)
  elseif has_event then
    redis.call('DEL', event_key)
  end
  redis.call('DEL', lock_key)
end
return 1
"""


# --- EXTEND ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extend:
    """Renew a user's lock while its holder works. Returns 1 if renewed, 0 if the lock
    is no longer ours."""

    lock_key: str
    token: str
    lock_ttl_ms: int


_EXTEND = r"""
if redis.call('GET', lock_key) == token then
  redis.call('PEXPIRE', lock_key, lock_ttl_ms)
  return 1
end
return 0
"""


# --- WARM -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Warm:
    """Fill a user's session and context only where absent (`bot ops cache warm`), so a
    live worker's fresher state is never overwritten. Returns {session filled (0/1),
    context filled (0/1)}. A context filled sets its fence in the session hash, whose
    own may be newer than the context read (which would let a stale context pass), and
    its summary with it."""

    session_key: str
    context_key: str
    session_ttl: int
    context_ttl: int
    fence_field: str  # the session hash's field for the context's fence
    fence: str  # the newest message stored when the context was read ('' for none)
    summary_field: str  # the session hash's field for the context's summary
    summary: str  # the context's summary (JSON; '' for none), written with the fence
    session: str  # the session hash's fields as JSON (bot/cache/codec.py)
    context: tuple[str, ...]  # context items (JSON), newest first


_WARM = r"""
local session_filled, context_filled = 0, 0
if redis.call('EXISTS', session_key) == 0 then
  hset_json(session_key, session)
  redis.call('EXPIRE', session_key, session_ttl)
  session_filled = 1
end
if #context > 0 and redis.call('EXISTS', context_key) == 0 then
  redis.call('RPUSH', context_key, unpack(context))
  redis.call('EXPIRE', context_key, context_ttl)
  redis.call('HSET', session_key, fence_field, fence, summary_field, summary)
  context_filled = 1
end
return {session_filled, context_filled}
"""


BEGIN = Script(Begin, _BEGIN)
RATE = Script(Rate, _RATE)
ACTIVE = Script(Active, _ACTIVE)
FINISH = Script(Finish, _FINISH)
ABORT = Script(Abort, _ABORT)
EXTEND = Script(Extend, _EXTEND)
WARM = Script(Warm, _WARM)
QUOTA = Script(Quota, _QUOTA)
