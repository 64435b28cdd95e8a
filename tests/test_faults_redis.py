"""Invariant 4 by real faults: a Redis outage degrades, never stops, the bot.

Each test owns an embedded Redis (a real redis-server in tmp_path) and stops, hangs
(SIGSTOP) or corrupts it; Postgres is the suite's shared test database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import Reply, ReplyKind, TextSink
from bot.embedded import EmbeddedRedis
from bot.responders import EchoResponder, ResponderRequest, ResponderResult
from bot.service import ConversationService
from tests.support import ServiceFactory, messages_of, msg, new_user

OP_TIMEOUT = 0.5
COOLDOWN = 1.0
GUARD_LOGGER = "bot.cache.guard"


@pytest.fixture
async def inspect(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    """A client of the test's own, to look at (and tamper with) what the bot keeps."""
    client = Redis.from_url(own_redis.url, socket_timeout=5)
    yield client
    await client.aclose()


async def build(
    make_service: ServiceFactory, server: EmbeddedRedis, **overrides: object
) -> ConversationService:
    overrides.setdefault("redis_op_timeout_seconds", OP_TIMEOUT)
    overrides.setdefault("redis_breaker_cooldown_seconds", COOLDOWN)
    return await make_service(redis_url=server.url, **overrides)


def earlier(reply: Reply) -> int:
    """How many earlier messages the echo responder saw in its context."""
    assert reply.text is not None, reply
    return int(reply.text.split("(")[1].split()[0])


def guard_warnings(caplog: pytest.LogCaptureFixture, about: str = "") -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == GUARD_LOGGER and r.levelno >= logging.WARNING and about in r.getMessage()
    ]


async def test_redis_stopped_answers_from_postgres_and_recovers_by_itself(
    make_service: ServiceFactory,
    own_redis: EmbeddedRedis,
    inspect: Redis,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await build(make_service, own_redis)
    keys = service.cache.keys
    user = new_user()
    first = await service.handle(msg(user, "before 0"))
    await service.handle(msg(user, "before 1"))
    conversation = first.conversation_id
    assert conversation is not None
    session_key, context_key = keys.session("console", user), keys.context(conversation)
    assert await inspect.llen(context_key) == 4

    port = own_redis.port
    own_redis.stop()
    caplog.set_level(logging.INFO, logger=GUARD_LOGGER)
    during: list[Reply] = []
    for i in range(6):
        if i == 3:
            await asyncio.sleep(COOLDOWN + 0.1)  # a probe finds Redis still down
        during.append(await service.handle(msg(user, f"during {i}")))

    assert [r.kind for r in during] == [ReplyKind.ANSWER] * 6
    assert {r.conversation_id for r in during} == {conversation}
    assert [earlier(r) for r in during] == [4 + 2 * i for i in range(6)]
    assert len(guard_warnings(caplog)) == 1, caplog.text
    assert "Redis unavailable" in guard_warnings(caplog)[0]
    assert service.stats["cache_unavailable"] == 6
    rows = await messages_of(engine, user)
    assert [r.content for r in rows if r.role == "user"] == [
        "before 0",
        "before 1",
        *(f"during {i}" for i in range(6)),
    ]
    assert len(rows) == 16

    own_redis.start()
    assert own_redis.port == port
    await inspect.connection_pool.disconnect()  # its old connection died with the server
    # What the bot cached before the outage is back from the append-only file, stale.
    assert await inspect.llen(context_key) == 4
    assert await inspect.exists(session_key)

    await asyncio.sleep(COOLDOWN + 0.1)
    after = await service.handle(msg(user, "after 0"))
    assert after.kind is ReplyKind.ANSWER and after.conversation_id == conversation
    assert earlier(after) == 16  # rebuilt from Postgres, not the stale list of 4
    assert "Redis is back" in caplog.text
    assert await inspect.hget(session_key, "conversation_id") == str(conversation).encode()
    hits = service.stats["session_hit"], service.stats["context_hit"]

    again = await service.handle(msg(user, "after 1"))
    assert earlier(again) == 18
    assert service.stats["session_hit"] == hits[0] + 1
    assert service.stats["context_hit"] == hits[1] + 1
    assert await inspect.llen(context_key) == 20  # capped at CONTEXT_MESSAGES
    assert len(await messages_of(engine, user)) == 20
    assert len(guard_warnings(caplog)) == 1


async def test_redis_stopped_still_rate_limits_locally(
    make_service: ServiceFactory, own_redis: EmbeddedRedis, engine: AsyncEngine
) -> None:
    service = await build(make_service, own_redis, rate_limit_per_minute=2)
    own_redis.stop()
    user = new_user()
    replies = [await service.handle(msg(user, f"m{i}")) for i in range(4)]

    assert [r.kind for r in replies] == [ReplyKind.ANSWER] * 2 + [ReplyKind.RATE_LIMITED] * 2
    assert replies[2].text and "try again in" in replies[2].text
    assert replies[3].text is None
    rows = await messages_of(engine, user)
    assert [r.content for r in rows if r.role == "user"] == ["m0", "m1"]


async def test_redis_hung_costs_the_budget_once_then_nothing(
    make_service: ServiceFactory,
    own_redis: EmbeddedRedis,
    inspect: Redis,
    engine: AsyncEngine,
) -> None:
    service = await build(make_service, own_redis, lock_wait_seconds=5)
    keys = service.cache.keys
    user = new_user()
    warm = await service.handle(msg(user, "warm", pid=f"{user}:w"))
    assert warm.kind is ReplyKind.ANSWER

    own_redis.pause()
    try:
        started = time.monotonic()
        first = await service.handle(msg(user, "hung 0", pid=f"{user}:h0"))
        first_took = time.monotonic() - started
        started = time.monotonic()
        rest = [
            await service.handle(msg(user, f"hung {i}", pid=f"{user}:h{i}")) for i in range(1, 11)
        ]
        rest_took = time.monotonic() - started
        assert service.cache.guard.is_open
    finally:
        own_redis.resume()

    assert first.kind is ReplyKind.ANSWER and earlier(first) == 2
    assert OP_TIMEOUT * 0.9 <= first_took < 3, first_took
    assert rest_took < 3, rest_took
    assert [earlier(r) for r in rest] == [min(2 + 2 * i, 20) for i in range(1, 11)]
    assert all(r.conversation_id == warm.conversation_id for r in rest)
    rows = await messages_of(engine, user)
    assert len(rows) == 24 and len({r.platform_message_id for r in rows if r.role == "user"}) == 12

    # The BEGIN sent to the hung server ran when it resumed, taking the user's lock:
    # it must not hold off the user's next message until its TTL runs out.
    await asyncio.sleep(COOLDOWN + 0.1)
    hits = service.stats["session_hit"]
    async with asyncio.timeout(5):
        after = await service.handle(msg(user, "after 0", pid=f"{user}:a0"))
        again = await service.handle(msg(user, "after 1", pid=f"{user}:a1"))
    assert after.kind is ReplyKind.ANSWER and earlier(after) == 20  # CONTEXT_MESSAGES
    assert again.kind is ReplyKind.ANSWER and earlier(again) == 20
    assert not service.cache.guard.is_open
    assert service.stats["session_hit"] == hits + 1  # stale keys dropped, then cached again
    assert service.stats["lock_timeout"] == 0
    session_key = keys.session("console", user)
    assert await inspect.hget(session_key, "conversation_id") == str(warm.conversation_id).encode()
    assert len(await messages_of(engine, user)) == 28


class CorruptingResponder(EchoResponder):
    """The echo responder; while it answers, someone overwrites `corrupt` with a string."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.corrupt: str | None = None

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        if self.corrupt is not None:
            await self.redis.set(self.corrupt, "not a list")
            self.corrupt = None
        return await super().respond(request, on_text)


async def test_failed_refresh_after_commit_drops_the_stale_keys(
    make_service: ServiceFactory,
    own_redis: EmbeddedRedis,
    inspect: Redis,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    responder = CorruptingResponder(inspect)
    service = await build(make_service, own_redis, responder=responder, lock_wait_seconds=5)
    keys = service.cache.keys
    user = new_user()
    first = await service.handle(msg(user, "one", pid=f"{user}:p1"))
    await service.handle(msg(user, "two", pid=f"{user}:p2"))
    assert first.conversation_id is not None
    session_key, context_key = keys.session("console", user), keys.context(first.conversation_id)

    caplog.set_level(logging.INFO, logger=GUARD_LOGGER)
    responder.corrupt = context_key  # FINISH will fail at its LPUSHX, after its HSET
    third = await service.handle(msg(user, "three", pid=f"{user}:p3"))

    assert third.kind is ReplyKind.ANSWER and earlier(third) == 4  # stored: it is answered
    assert not await inspect.exists(session_key)
    assert await inspect.type(context_key) in (b"none", b"list")
    assert not await inspect.exists(keys.lock("console", user))
    assert not service.cache.guard.is_open  # a script error is no outage
    assert guard_warnings(caplog, "unavailable") == []
    assert len(guard_warnings(caplog, "WRONGTYPE")) == 1

    async with asyncio.timeout(5):
        fourth = await service.handle(msg(user, "four", pid=f"{user}:p4"))
        redelivered = await service.handle(msg(user, "three", pid=f"{user}:p3"))
        fifth = await service.handle(msg(user, "five", pid=f"{user}:p5"))
    assert fourth.kind is ReplyKind.ANSWER and earlier(fourth) == 6
    assert redelivered.kind is ReplyKind.DUPLICATE
    assert fifth.kind is ReplyKind.ANSWER and earlier(fifth) == 8
    assert await inspect.llen(context_key) == 10
    rows = await messages_of(engine, user)
    assert [r.content for r in rows if r.role == "user"] == ["one", "two", "three", "four", "five"]


async def test_a_corrupt_key_read_is_no_outage_and_is_repaired(
    make_service: ServiceFactory,
    own_redis: EmbeddedRedis,
    inspect: Redis,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await build(make_service, own_redis, lock_wait_seconds=5)
    keys = service.cache.keys
    user, other = new_user(), new_user()
    first = await service.handle(msg(user, "one"))
    await service.handle(msg(other, "hello"))
    assert first.conversation_id is not None
    await inspect.set(keys.context(first.conversation_id), "not a list")  # BEGIN's LRANGE fails

    caplog.set_level(logging.INFO, logger=GUARD_LOGGER)
    second = await service.handle(msg(user, "two"))
    assert second.kind is ReplyKind.ANSWER and earlier(second) == 2  # from Postgres
    assert not service.cache.guard.is_open and guard_warnings(caplog, "unavailable") == []
    assert len(guard_warnings(caplog, "WRONGTYPE")) == 1

    hits = service.stats["session_hit"]
    other_reply = await service.handle(msg(other, "still cached?"))
    assert earlier(other_reply) == 2 and service.stats["session_hit"] == hits + 1

    async with asyncio.timeout(5):
        third = await service.handle(msg(user, "three"))
        fourth = await service.handle(msg(user, "four"))
    assert earlier(third) == 4 and earlier(fourth) == 6
    assert service.stats["session_hit"] == hits + 2  # the cache is whole again
    assert await inspect.llen(keys.context(first.conversation_id)) == 8
    assert len(await messages_of(engine, user)) == 8


async def test_connections_pooled_before_a_restart_trip_the_breaker_once(
    make_service: ServiceFactory, own_redis: EmbeddedRedis, engine: AsyncEngine
) -> None:
    service = await build(make_service, own_redis)
    users = [new_user() for _ in range(8)]
    await asyncio.gather(*(service.handle(msg(u, "warm")) for u in users))  # pools several

    own_redis.kill()
    own_redis.start()  # on the same port: each pooled connection is dead now
    first = await service.handle(msg(users[0], "after restart"))  # finds one dead: trips
    assert first.kind is ReplyKind.ANSWER and service.stats["cache_unavailable"] == 1
    await asyncio.sleep(COOLDOWN + 0.1)
    probe = await service.handle(msg(users[0], "probe"))
    assert probe.kind is ReplyKind.ANSWER and not service.cache.guard.is_open

    hits = service.stats["session_hit"]
    rest = await asyncio.gather(*(service.handle(msg(u, "all at once")) for u in users[1:]))
    assert [r.kind for r in rest] == [ReplyKind.ANSWER] * 7
    # The probe found Redis back; no other dead connection sent the bot back to Postgres.
    assert service.stats["cache_unavailable"] == 1
    assert service.stats["session_hit"] == hits + 7
    assert not service.cache.guard.is_open
    assert len(await messages_of(engine, users[0])) == 6
