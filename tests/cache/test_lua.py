"""The machinery of the scripts: arguments named at the top of the Lua, by type."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from bot.cache.lua import Script
from bot.cache.state import ContextUpdate


@dataclass(frozen=True, slots=True)
class Sample:
    first_key: str
    second_key: str
    name: str
    count: int
    ratio: float
    flag: bool
    maybe: str | None
    mode: ContextUpdate
    middle: tuple[str, ...]
    rest: tuple[str, ...]


SAMPLE_BODY = r"""
return {first_key, second_key, name, count, tostring(ratio), tostring(flag),
        tostring(maybe), mode, MODE_APPEND, #middle, middle[1] or '', #rest, rest[#rest] or ''}
"""


async def test_arguments_reach_lua_by_name_and_type(redis: Redis) -> None:
    script = Script(Sample, SAMPLE_BODY)
    args = Sample("k1", "k2", "x", 7, 0.5, True, None, ContextUpdate.REPLACE, ("m",), ("r1", "r2"))

    got = await script.bind(redis)(args)

    texts = [item.decode() if isinstance(item, bytes) else item for item in got]
    assert texts == ["k1", "k2", "x", 7, "0.5", "true", "nil", "replace", "append", 1, "m", 2, "r2"]
    assert script.keys_and_args(args) == (
        ["k1", "k2"],
        ["x", 7, "0.500000", "1", "", "replace", 1, "m", "r1", "r2"],
    )


def test_argument_order_is_checked() -> None:
    @dataclass(frozen=True)
    class KeyAfterArgument:
        token: str
        lock_key: str

    @dataclass(frozen=True)
    class TupleBeforeScalar:
        items: tuple[str, ...]
        token: str

    with pytest.raises(TypeError, match="keys come first"):
        Script(KeyAfterArgument, "return 1")
    with pytest.raises(TypeError, match="tuples come last"):
        Script(TupleBeforeScalar, "return 1")
