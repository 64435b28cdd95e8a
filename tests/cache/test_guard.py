"""The Redis time bound: the worker's (with a circuit breaker) and a one-shot command's
(without), against real Redis servers, one of them not there."""

from __future__ import annotations

import logging
import time

import pytest
from redis.asyncio import Redis

from bot.cache.guard import RedisGuard
from bot.errors import CacheRefused, CacheUnavailable, CircuitOpen
from tests.support import free_port


@pytest.fixture
async def nowhere() -> Redis:
    """A client of a port nothing listens on."""
    return Redis(port=free_port(), socket_connect_timeout=1)


async def test_the_worker_guard_opens_its_breaker_on_an_outage(nowhere: Redis) -> None:
    guard = RedisGuard(op_timeout=1.0, cooldown=60.0)

    with pytest.raises(CacheUnavailable) as first:
        await guard.run(nowhere.ping)
    with pytest.raises(CircuitOpen):  # not even tried for the cool-down
        await guard.run(nowhere.ping)

    assert not isinstance(first.value, CircuitOpen) and guard.is_open


async def test_a_one_shot_guard_fails_fast_and_tries_again_next_time(
    nowhere: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    guard = RedisGuard.one_shot(op_timeout=1.0)
    caplog.set_level(logging.INFO, logger="bot.cache.guard")

    started = time.monotonic()
    for _ in range(2):
        with pytest.raises(CacheUnavailable) as failed:
            await guard.run(nowhere.ping)
        assert not isinstance(failed.value, CircuitOpen)  # no breaker: tried again

    assert time.monotonic() - started < 2.5 and not guard.is_open
    assert caplog.records == []  # the operator is told by the command, not by worker logs


async def test_a_one_shot_guard_bounds_a_call_in_time(redis: Redis) -> None:
    guard = RedisGuard.one_shot(op_timeout=0.2)

    started = time.monotonic()
    with pytest.raises(CacheUnavailable):
        await guard.run(lambda: redis.blpop(["guard:never-filled"], timeout=5))

    assert time.monotonic() - started < 1.5


async def test_an_error_reply_is_a_refusal_not_an_outage(redis: Redis, settings: object) -> None:
    worker = RedisGuard(op_timeout=1.0, cooldown=60.0)
    prefix = settings.redis_key_prefix
    await redis.set(f"{prefix}a-string", "x")

    with pytest.raises(CacheRefused):
        await worker.run(lambda: redis.lpush(f"{prefix}a-string", "y"))  # WRONGTYPE

    assert not worker.is_open
    assert await worker.run(redis.ping)
