"""Every Lua script of the bot: each turns several Redis commands into one atomic round trip.

A script's arguments are one frozen dataclass, written right above its Lua body. Its
fields named `*_key` are the script's KEYS, the others its ARGV, in order; the Lua
header that names them (`local lock_key = KEYS[1]`, `local lock_ttl_ms =
tonumber(ARGV[2])`, …) is generated from the dataclass, so the names in the Lua and
the fields in Python cannot drift apart. By the field's type, a value arrives in Lua
as a string, a number (int, float), a boolean (bool), nil when None (`… | None`), or a
table (a tuple: a variable tail, sent as its length and then its items; the last
tail needs no length). A StrEnum field also brings its members as constants
(`CONTEXT_UPDATE_APPEND`), and every script knows the event states of
bot/cache/events.py (`STATE_DONE`, …).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Generic, TypeVar, Union, get_args, get_origin, get_type_hints

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from bot.cache.events import lua_constants
from bot.cache.state import ContextUpdate

A = TypeVar("A")
Encode = Callable[[Any], Any]


# --- BEGIN ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """Start handling a message: take the user's lock, claim the event, mark the user
    active, read session, channel config and context, and (session known) count the
    rate limit.

    Returns {'locked'} | {'duplicate'} | {'delivering'} | {'ok', session fields (flat),
    config JSON or '', rate count, rate ttl, context as one JSON array (newest first)
    or '', 1 if an earlier claim on the event was taken over else 0}.
    """

    lock_key: str
    event_key: str
    session_key: str
    channel_config_key: str
    active_key: str
    token: str  # the lock's value: who holds it
    lock_ttl_ms: int
    has_event: bool  # the platform gave an event id to claim
    processing_ttl: int  # s a 'processing' claim lives (only a crashed holder's expires)
    rate_key_template: str  # with '{user_id}' for the id the session names
    rate_window: int  # s
    now: float  # unix time
    active_window: int  # s a user counts as active
    active_member: str  # the user's platform id, in the channel's active set
    context_key_template: str  # with '{conversation_id}'
    context_length: int  # messages read
    delivery_lease: int  # s an 'answered' claim is taken for a reply being sent


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
redis.call('ZADD', active_key, now, active_member)
redis.call('ZREMRANGEBYSCORE', active_key, '-inf', now - active_window)
redis.call('EXPIRE', active_key, active_window)
local session = redis.call('HGETALL', session_key)
local config = redis.call('GET', channel_config_key) or ''
local count, ttl, context = 0, 0, ''
local fields = {}
for i = 1, #session, 2 do fields[session[i]] = session[i + 1] end
if fields['user_id'] then
  local rate_key = string.gsub(rate_key_template, '{user_id}', fields['user_id'])
  count = redis.call('INCR', rate_key)
  ttl = redis.call('TTL', rate_key)
  if ttl < 0 then
    redis.call('EXPIRE', rate_key, rate_window)
    ttl = rate_window
  end
end
if fields['conversation_id'] then
  local context_key = string.gsub(
    context_key_template, '{conversation_id}', fields['conversation_id'])
  local items = redis.call('LRANGE', context_key, 0, context_length - 1)
  -- One string, not a list: one reply to parse and one json.loads on the client.
  if #items > 0 then context = '[' .. table.concat(items, ',') .. ']' end
end
return {'ok', session, config, count, ttl, context, taken_over}
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


# --- FINISH ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finish:
    """After the Postgres commit: write back session, context and channel config, mark
    the event 'answered' and the events this worker delivered since its last call
    'done' (bot/cache/delivery.py), and release the lock. Returns 1."""

    session_key: str
    context_key: str
    lock_key: str
    event_key: str
    channel_config_key: str
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
    now: float
    delivered: tuple[str, ...]  # event keys to mark 'done'
    context: tuple[str, ...]  # context items (JSON), newest first


_FINISH = r"""
if session then
  hset_json(session_key, session)
  redis.call('EXPIRE', session_key, session_ttl)
end
for _, key in ipairs(delivered) do
  redis.call('SET', key, STATE_DONE, 'XX', 'EX', event_ttl)
end
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
if channel_config then
  redis.call('SET', channel_config_key, channel_config, 'EX', channel_config_ttl)
end
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
    context filled (0/1)}."""

    session_key: str
    context_key: str
    session_ttl: int
    context_ttl: int
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
  context_filled = 1
end
return {session_filled, context_filled}
"""


# --- the machinery --------------------------------------------------------------------

# Shared by the scripts that write the session hash from its JSON (one codec for it).
_HSET_JSON = r"""
local function hset_json(key, json)
  local flat = {}
  for field, value in pairs(cjson.decode(json)) do
    flat[#flat + 1] = field
    flat[#flat + 1] = value
  end
  redis.call('HSET', key, unpack(flat))
end
"""


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: type  # str, int, float, bool, a StrEnum, or tuple
    optional: bool


def _fields(args_type: type) -> tuple[list[str], list[_Field]]:
    """The KEYS names and the ARGV fields of a script's argument dataclass, checked."""
    hints = get_type_hints(args_type)
    keys: list[str] = []
    argv: list[_Field] = []
    for item in fields(args_type):
        if item.name.endswith("_key"):
            if argv:
                raise TypeError(f"{args_type.__name__}.{item.name}: keys come first")
            keys.append(item.name)
            continue
        hint = hints[item.name]
        members = [arg for arg in get_args(hint) if arg is not type(None)]
        optional = get_origin(hint) in (Union, types.UnionType) and len(members) == 1
        kind = members[0] if optional else (get_origin(hint) or hint)
        if argv and argv[-1].kind is tuple and kind is not tuple:
            raise TypeError(f"{args_type.__name__}.{item.name}: tuples come last")
        argv.append(_Field(item.name, kind, optional))
    return keys, argv


def _header(keys: list[str], argv: list[_Field]) -> str:
    """Lua locals naming every KEYS and ARGV entry, converted by type."""
    lines = [f"local {name} = KEYS[{i}]" for i, name in enumerate(keys, 1)]
    tails = [f for f in argv if f.kind is tuple]
    for i, item in enumerate((f for f in argv if f.kind is not tuple), 1):
        lines.append(f"local {item.name} = {_lua_value(item, f'ARGV[{i}]')}")
        if isinstance(item.kind, type) and issubclass(item.kind, StrEnum):
            prefix = item.name.upper()
            lines += [f"local {prefix}_{m.name} = '{m.value}'" for m in item.kind]
    if tails:
        lines.append(f"local at = {len(argv) - len(tails) + 1}")
    for item in tails[:-1]:
        lines += [
            f"local {item.name} = {{}}",
            f"for i = 1, tonumber(ARGV[at]) do {item.name}[i] = ARGV[at + i] end",
            f"at = at + 1 + #{item.name}",
        ]
    if tails:
        last = tails[-1].name
        lines.append(f"local {last} = {{}}")
        lines.append(f"for i = at, #ARGV do {last}[#{last} + 1] = ARGV[i] end")
    return "\n".join(lines) + "\n"


def _lua_value(item: _Field, raw: str) -> str:
    if item.kind is bool:
        return f"{raw} == '1'"
    if item.kind in (int, float):
        return f"tonumber({raw})"  # nil for '' (None)
    return f"({raw} ~= '' and {raw} or nil)" if item.optional else raw


def _encoder(item: _Field) -> Encode:
    if item.kind is bool:
        return lambda value: "1" if value else "0"
    if item.kind is float:
        return lambda value: "" if value is None else f"{value:.6f}"
    if item.optional:
        return lambda value: "" if value is None else value
    return lambda value: value  # str (a StrEnum is one), int


class Script(Generic[A]):
    """A Lua body with the header of its argument dataclass `A`."""

    def __init__(self, args_type: type[A], body: str) -> None:
        keys, argv = _fields(args_type)
        self.args_type = args_type
        self.source = lua_constants() + _HSET_JSON + _header(keys, argv) + body
        self._keys = keys
        self._scalars = [(f.name, _encoder(f)) for f in argv if f.kind is not tuple]
        tails = [f.name for f in argv if f.kind is tuple]
        self._counted, self._rest = tails[:-1], tails[-1:]

    def keys_and_args(self, args: A) -> tuple[list[str], list[Any]]:
        keys = [getattr(args, name) for name in self._keys]
        argv = [encode(getattr(args, name)) for name, encode in self._scalars]
        for name in self._counted:
            items: Sequence[str] = getattr(args, name)
            argv += [len(items), *items]
        for name in self._rest:
            argv += getattr(args, name)
        return keys, argv

    def bind(self, redis: Redis) -> BoundScript[A]:
        return BoundScript(self, redis.register_script(self.source))


class BoundScript(Generic[A]):
    """A script registered with one client: EVALSHA, loading it once if Redis lacks it."""

    def __init__(self, script: Script[A], registered: AsyncScript) -> None:
        self.script = script
        self._registered = registered

    async def __call__(self, args: A, pipeline: Pipeline | None = None) -> Any:
        keys, argv = self.script.keys_and_args(args)
        return await self._registered(keys=keys, args=argv, client=pipeline)


BEGIN = Script(Begin, _BEGIN)
RATE = Script(Rate, _RATE)
FINISH = Script(Finish, _FINISH)
ABORT = Script(Abort, _ABORT)
EXTEND = Script(Extend, _EXTEND)
WARM = Script(Warm, _WARM)
