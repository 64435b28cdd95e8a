"""Feature flags: what the service does with them, and how a change reaches every worker.

Real Postgres and Redis; two services built like two workers, each with its own
FeatureFlags (own Redis client, own pub/sub listener, own refresh loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.flags import LOADED_FIELD, FlagCache
from bot.cache.keys import Keys
from bot.domain import ReplyKind
from bot.embedded import EmbeddedRedis
from bot.errors import FlagError
from bot.flags import FeatureFlags, FlagChange, change_flag
from bot.flagset import GLOBAL, MAINTENANCE_TEXT, FlagSet, StaticFlags, parse_value
from bot.service import ConversationService
from tests.support import CountingResponder, ServiceFactory, fetch, messages_of, msg, new_user

Started = Callable[..., Awaitable[ConversationService]]


@pytest.fixture
async def started(make_service: ServiceFactory) -> AsyncIterator[Started]:
    """Services whose FeatureFlags are started (and stopped at the end), like workers."""
    running: list[FeatureFlags] = []

    async def make(**overrides: object) -> ConversationService:
        service = await make_service(**overrides)
        flags = service.flags
        assert isinstance(flags, FeatureFlags)
        await flags.start()
        running.append(flags)
        return service

    yield make
    for flags in running:
        await flags.stop()


def cache_of(service: ConversationService) -> FlagCache:
    flags = service.flags
    assert isinstance(flags, FeatureFlags)
    return flags.cache


async def set_flag(
    service: ConversationService, name: str, value: object, scope: str = GLOBAL
) -> FlagChange:
    return await change_flag(service.store.flags, cache_of(service), scope, name, value)


async def unset_flag(service: ConversationService, name: str, scope: str = GLOBAL) -> None:
    await change_flag(service.store.flags, cache_of(service), scope, name, None, unset=True)


async def until(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until `check` holds; fails after `within`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def in_maintenance(service: ConversationService, user: str) -> bool:
    reply = await service.handle(msg(user, "are you there?"))
    return reply.kind is ReplyKind.MAINTENANCE


@pytest.fixture(autouse=True)
async def clean_flags(engine: AsyncEngine) -> AsyncIterator[None]:
    """Flags are global to the test database: leave none behind for other tests."""
    yield
    async with engine.begin() as connection:
        await connection.exec_driver_sql("DELETE FROM feature_flags")


def test_values_are_checked_against_the_known_flags() -> None:
    assert parse_value("maintenance", "on") is True
    assert parse_value("maintenance", "FALSE") is False
    assert parse_value("replies_disabled", "1") is True
    assert parse_value("maintenance_message", "  back at 14:00 ") == "back at 14:00"
    with pytest.raises(FlagError, match="known flags: maintenance, maintenance_message"):
        parse_value("maintainance", "true")
    with pytest.raises(FlagError, match="true or false"):
        parse_value("maintenance", "maybe")
    with pytest.raises(FlagError, match="text of 1 to"):
        parse_value("maintenance_message", "   ")


def test_a_channel_value_wins_over_the_global_one() -> None:
    flags = FlagSet({"maintenance": True}, {"slack": {"maintenance": False}})
    assert flags.enabled("maintenance", "console")
    assert not flags.enabled("maintenance", "slack")
    assert flags.maintenance_text("console") == MAINTENANCE_TEXT
    assert FlagSet({"maintenance_message": "soon"}).maintenance_text("x") == "soon"


async def test_maintenance_answers_politely_without_responder_or_stores(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    responder = CountingResponder()
    service = await make_service(responder=responder)
    service.flags = StaticFlags(FlagSet({"maintenance": True, "maintenance_message": "At 14:00"}))
    user = new_user()

    reply = await service.handle(msg(user, "hello"))

    assert (reply.kind, reply.text) == (ReplyKind.MAINTENANCE, "At 14:00")
    assert responder.calls == []
    assert await fetch(engine, "SELECT 1 FROM users WHERE channel_user_id = :u", u=user) == []
    assert await redis.exists(service.cache.keys.session("console", user)) == 0
    assert service.stats["maintenance"] == 1


async def test_replies_disabled_silences_only_that_channel(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    responder = CountingResponder()
    service = await make_service(responder=responder)
    service.flags = StaticFlags(FlagSet(channels={"slack": {"replies_disabled": True}}))
    user = new_user()

    muted = await service.handle(msg(user, "hello", channel="slack"))
    answered = await service.handle(msg(user, "hello", channel="console"))

    assert muted.text is None and muted.kind is ReplyKind.MUTED
    assert answered.kind is ReplyKind.ANSWER
    assert len(responder.calls) == 1
    assert [m.role for m in await messages_of(engine, user)] == ["user", "assistant"]


async def test_a_change_reaches_two_workers_within_seconds_by_pubsub(started: Started) -> None:
    # The refresh is far away: only the invalidation message can be this fast.
    one, two = await started(flags_refresh_seconds=60), await started(flags_refresh_seconds=60)
    user = new_user()
    assert not await in_maintenance(one, user)

    change = await set_flag(one, "maintenance", True)

    assert change.cached and change.notified is not None and change.notified >= 2
    for worker in (one, two):
        assert await until(partial(in_maintenance, worker, user), within=3) < 3
    reply = await two.handle(msg(user, "still there?"))
    assert reply.text == MAINTENANCE_TEXT

    await unset_flag(two, "maintenance")
    for worker in (one, two):
        await until(partial(_answers, worker, user), within=3)


async def _answers(service: ConversationService, user: str) -> bool:
    return (await service.handle(msg(user, "hi"))).kind is ReplyKind.ANSWER


async def test_a_lost_invalidation_is_caught_by_the_periodic_refresh(
    started: Started, redis: Redis
) -> None:
    one, two = await started(flags_refresh_seconds=0.5), await started(flags_refresh_seconds=0.5)
    cache = cache_of(one)

    # Change Postgres and Redis the way ops do, but publish nothing.
    await one.store.flags.change(GLOBAL, "replies_disabled", True, cache.write)

    for worker in (one, two):
        await until(partial(_muted, worker), within=3)


async def _muted(service: ConversationService) -> bool:
    return service.flags.current.enabled("replies_disabled", "console")


async def test_flushed_hashes_are_refilled_from_postgres(
    started: Started, redis: Redis, settings: object
) -> None:
    worker = await started(flags_refresh_seconds=0.3)
    await set_flag(worker, "replies_disabled", True, scope="slack")
    keys = cache_of(worker).keys
    await until(lambda: _muted_on(worker, "slack"), within=3)

    await redis.delete(keys.features_global(), keys.features_channel("slack"))
    await asyncio.sleep(1)  # a few refreshes

    assert worker.flags.current.enabled("replies_disabled", "slack")
    cached = await redis.hgetall(keys.features_channel("slack"))
    assert cached == {LOADED_FIELD.encode(): b"1", b"replies_disabled": b"true"}
    assert await redis.hgetall(keys.features_global()) == {LOADED_FIELD.encode(): b"1"}


async def _muted_on(service: ConversationService, channel: str) -> bool:
    return service.flags.current.enabled("replies_disabled", channel)


async def test_redis_down_keeps_the_flags_and_postgres_changes_still_arrive(
    started: Started, own_redis: EmbeddedRedis
) -> None:
    fast = {"flags_refresh_seconds": 0.3, "redis_op_timeout_seconds": 0.3}
    worker = await started(redis_url=own_redis.url, redis_breaker_cooldown_seconds=0.5, **fast)
    user = new_user()
    await set_flag(worker, "maintenance", True)
    await until(lambda: in_maintenance(worker, user), within=3)

    own_redis.stop()
    await asyncio.sleep(1.5)  # several failed refreshes
    assert await in_maintenance(worker, user)  # the last known flags stay in force

    # Ops change a flag while Redis is down: it is committed to Postgres only ...
    change = await set_flag(worker, "maintenance_message", "Back soon")
    assert not change.cached and change.notified is None
    # ... and the worker, which lost Redis, reads Postgres until Redis is back.
    await until(lambda: _says(worker, user, "Back soon"), within=3)

    own_redis.start()  # comes back with the hashes it had: stale
    keys = worker.cache.keys
    inspect = Redis.from_url(own_redis.url)
    try:
        await until(lambda: _cached_message(inspect, keys), within=5)
    finally:
        await inspect.aclose()
    assert await _says(worker, user, "Back soon")


async def _says(service: ConversationService, user: str, text: str) -> bool:
    return (await service.handle(msg(user, "hello?"))).text == text


async def _cached_message(client: Redis, keys: Keys) -> bool:
    value = await client.hget(keys.features_global(), "maintenance_message")
    return value == b'"Back soon"'
