"""The machinery of the Lua scripts (bot/cache/scripts.py): a script's arguments are one
frozen dataclass; this turns it into the Lua header that names them and into the KEYS
and ARGV of each call.

Fields named `*_key` are KEYS, the others ARGV, in order (keys first, tuples last). A
key typed `str | None` is optional: left out of KEYS when None (nil in Lua), so it comes
after the keys that are always given (a script on a Redis Cluster names only keys of
one slot, and leaves out those of others). By
the field's type a value arrives in Lua as a string, a number (int, float), a boolean
(bool), nil when None (`… | None`), or a table (a tuple: a variable tail, sent as its
length and then its items; the last tail needs no length). A StrEnum field also
brings its members as constants (`CONTEXT_UPDATE_APPEND`), and every script knows the
event states of bot/cache/events.py (`STATE_DONE`, …) and the helpers `hset_json`,
`mark_active` and `add_quota`.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Generic, TypeVar, Union, get_args, get_origin, get_type_hints

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from bot.cache.events import lua_constants

A = TypeVar("A")
Encode = Callable[[Any], Any]

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

# Shared by BEGIN and, on a cluster, ACTIVE: a user seen now in a channel's active set,
# which keeps only the window's members and expires with the last of them.
_MARK_ACTIVE = r"""
local function mark_active(key, now, window, member)
  redis.call('ZADD', key, now, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  redis.call('EXPIRE', key, window)
end
"""

# Shared by FINISH and, on a cluster, QUOTA: a quota's counter (bot/quotas.py) set to
# Postgres's count when it was rebuilt (unless another turn set it first), then counting
# the exchange's tokens. A counter Redis lost meanwhile is left for the next turn to
# rebuild, its count then holding this exchange.
_ADD_QUOTA = r"""
local function add_quota(key, base, expire_at, tokens)
  if base ~= '' then redis.call('SET', key, base, 'NX', 'EXAT', expire_at) end
  if tokens > 0 and redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, tokens) end
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
    optional_keys = False
    for item in fields(args_type):
        hint = hints[item.name]
        members = [arg for arg in get_args(hint) if arg is not type(None)]
        optional = get_origin(hint) in (Union, types.UnionType) and len(members) == 1
        if item.name.endswith("_key"):
            if argv:
                raise TypeError(f"{args_type.__name__}.{item.name}: keys come first")
            if optional_keys and not optional:
                raise TypeError(f"{args_type.__name__}.{item.name}: optional keys come last")
            optional_keys = optional
            keys.append(item.name)
            continue
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
        self.source = (
            lua_constants() + _HSET_JSON + _MARK_ACTIVE + _ADD_QUOTA + _header(keys, argv) + body
        )
        self._keys = keys
        self._scalars = [(f.name, _encoder(f)) for f in argv if f.kind is not tuple]
        tails = [f.name for f in argv if f.kind is tuple]
        self._counted, self._rest = tails[:-1], tails[-1:]

    def keys_and_args(self, args: A) -> tuple[list[str], list[Any]]:
        keys = [getattr(args, name) for name in self._keys]
        while keys and keys[-1] is None:
            keys.pop()  # optional keys left out
        if None in keys:
            raise ValueError(f"{self.args_type.__name__}: an optional key given after one left out")
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

    async def load(self) -> None:
        """SCRIPT LOAD: on a cluster, on every primary."""
        await self._registered.registered_client.script_load(self.script.source)


class ScriptPipelines:
    """Pipelines of script calls (and commands) on a Redis Cluster, whose pipeline does
    not load a script a node lacks. The scripts `used` are loaded on every primary
    before the first pipeline, and again when a node answers NOSCRIPT (a replica
    promoted by a failover starts without them); the pipeline then runs once more, and
    what ran in it runs twice. So a pipeline holds at most one script that must not
    run twice; beside it only what may (RATE: a count one higher; BEGIN: its caller's
    own lock and claim, found taken)."""

    def __init__(self, redis: Redis, used: Sequence[BoundScript[Any]]) -> None:
        self.redis = redis
        self.used = tuple(used)
        self._loaded = False

    async def run(self, fill: Callable[[Pipeline], Awaitable[None]]) -> list[Any]:
        if not self._loaded:
            await self._load()
        try:
            return await self._once(fill)
        except NoScriptError:
            await self._load()
            return await self._once(fill)

    async def _once(self, fill: Callable[[Pipeline], Awaitable[None]]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            await fill(pipe)
            return list(await pipe.execute())

    async def _load(self) -> None:
        for script in self.used:
            await script.load()
        self._loaded = True
