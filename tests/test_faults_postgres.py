"""Invariant 5 by real faults: a Postgres outage is retried, then told; nothing is lost.

The fault tests' own embedded Postgres (a real server in a temp dir), in a database of
this module, is hung (SIGSTOP), stopped, restarted and has its connections killed;
Redis is the suite's shared test server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import Reply, ReplyKind
from bot.embedded import EmbeddedPostgres
from bot.errors import StoreConflict, StoreFailed, StoreUnavailable
from bot.service import UNAVAILABLE_TEXT, ConversationService
from bot.store.retry import DatabaseRetry, is_transient
from tests.conftest import create_migrated_database
from tests.support import (
    FAST_POSTGRES,
    ServiceFactory,
    admin_fetch,
    engine_on,
    flush_cache,
    free_port,
    handled,
    messages_of,
    msg,
    new_user,
    terminate_backends,
)

COMMAND_TIMEOUT = FAST_POSTGRES["db_command_timeout_seconds"]
CONNECT_TIMEOUT = FAST_POSTGRES["db_connect_timeout_seconds"]
RETRY_DEADLINE = FAST_POSTGRES["db_retry_deadline_seconds"]
# The longest one message may take when Postgres does not answer: the retry deadline,
# plus the attempt running when it passes (a ping or connect, then a statement), plus
# slack for a loaded machine.
UNAVAILABLE_BOUND = RETRY_DEADLINE + CONNECT_TIMEOUT + COMMAND_TIMEOUT + 1.5
DATABASE = "bot_faults"
UNFINISHED = b"unfinished"  # a failed handling's claim: a redelivery takes it over
pytestmark = pytest.mark.usefixtures("fault_postgres_restored")


@pytest.fixture(scope="module")
def pg_server(fault_postgres: EmbeddedPostgres) -> EmbeddedPostgres:
    return fault_postgres


@pytest.fixture(scope="module")
async def pg_url(pg_server: EmbeddedPostgres) -> str:
    """A migrated database of this module on the fault tests' own server."""
    return await create_migrated_database(pg_server.url, DATABASE)


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the test's own, to look at what the bot stored."""
    async with engine_on(pg_url) as engine:
        yield engine


async def build(make_service: ServiceFactory, pg_url: str, **overrides: Any) -> ConversationService:
    return await make_service(database_url=pg_url, **{**FAST_POSTGRES, **overrides})


def earlier(reply: Reply) -> int:
    """How many earlier messages the echo responder saw in its context."""
    assert reply.text is not None, reply
    return int(reply.text.split("(")[1].split()[0])


async def admin(pg_server: EmbeddedPostgres, sql: str) -> list[Any]:
    return await admin_fetch(pg_server.url, sql)


async def terminate(pg_server: EmbeddedPostgres, application_name: str) -> int:
    return await terminate_backends(pg_server.url, DATABASE, application_name)


async def cached_context(redis: Redis, service: ConversationService, reply: Reply) -> list[str]:
    assert reply.conversation_id is not None
    key = service.cache.keys.context(reply.conversation_id)
    return [json.loads(item)["content"] for item in await redis.lrange(key, 0, -1)]


async def test_hung_postgres_is_told_in_bounded_time_and_nothing_half_written(
    make_service: ServiceFactory,
    pg_server: EmbeddedPostgres,
    pg_url: str,
    pg: AsyncEngine,
    redis: Redis,
) -> None:
    service = await build(make_service, pg_url)
    keys = service.cache.keys
    user = new_user()
    warm = await service.handle(msg(user, "warm", pid=f"{user}:h-0"))
    assert warm.kind is ReplyKind.ANSWER
    context_before = await cached_context(redis, service, warm)

    pg_server.pause()
    try:
        started = time.monotonic()
        hung = await service.handle(msg(user, "while hung", pid=f"{user}:h-1"))
        took = time.monotonic() - started
        started = time.monotonic()
        newcomer = await service.handle(msg(new_user(), "hello?"))  # cold: reads first
        newcomer_took = time.monotonic() - started
    finally:
        pg_server.resume()

    assert hung.kind is ReplyKind.UNAVAILABLE and hung.text == UNAVAILABLE_TEXT
    assert newcomer.kind is ReplyKind.UNAVAILABLE and newcomer.text == UNAVAILABLE_TEXT
    assert took < UNAVAILABLE_BOUND, took
    assert newcomer_took < UNAVAILABLE_BOUND, newcomer_took
    assert service.stats["store_unavailable"] == 2
    rows = await messages_of(pg, user)
    assert [r.content for r in rows if r.role == "user"] == ["warm"]  # nothing half-written
    assert len(rows) == 2
    assert await redis.get(keys.dedup("console", f"{user}:h-1")) == UNFINISHED  # redelivery handled
    assert await cached_context(redis, service, warm) == context_before

    after = await service.handle(msg(user, "while hung", pid=f"{user}:h-1"))  # redelivered
    assert after.kind is ReplyKind.ANSWER and earlier(after) == 2
    assert after.conversation_id == warm.conversation_id
    assert (await service.handle(msg(user, "after", pid=f"{user}:h-2"))).kind is ReplyKind.ANSWER
    rows = await messages_of(pg, user)
    assert [r.content for r in rows if r.role == "user"] == ["warm", "while hung", "after"]


async def test_stopped_postgres_tells_the_user_and_a_redelivery_is_stored_once(
    make_service: ServiceFactory,
    pg_server: EmbeddedPostgres,
    pg_url: str,
    pg: AsyncEngine,
    redis: Redis,
) -> None:
    service = await build(make_service, pg_url)
    keys = service.cache.keys
    user = new_user()
    first = await service.handle(msg(user, "one", pid=f"{user}:s-1"))
    assert first.kind is ReplyKind.ANSWER
    session_before = await redis.hgetall(keys.session("console", user))
    context_before = await cached_context(redis, service, first)

    pg_server.stop()
    try:
        started = time.monotonic()
        down = await service.handle(msg(user, "two", pid=f"{user}:s-2"))
        took = time.monotonic() - started
        newcomer = await service.handle(msg(new_user(), "hi", pid=f"{user}:s-new"))

        assert down.kind is ReplyKind.UNAVAILABLE and down.text == UNAVAILABLE_TEXT
        assert newcomer.kind is ReplyKind.UNAVAILABLE and newcomer.text == UNAVAILABLE_TEXT
        assert took < UNAVAILABLE_BOUND, took
        # Not marked done, lock released: the platform's redelivery will be handled.
        assert await redis.get(keys.dedup("console", f"{user}:s-2")) == UNFINISHED
        assert await redis.get(keys.dedup("console", f"{user}:s-new")) == UNFINISHED
        assert not await redis.exists(keys.lock("console", user))
        # Redis holds nothing Postgres does not.
        assert await cached_context(redis, service, first) == context_before
        session_now = await redis.hgetall(keys.session("console", user))
        assert session_now[b"conversation_id"] == session_before[b"conversation_id"]
    finally:
        pg_server.start()

    redelivered = await handled(service, msg(user, "two", pid=f"{user}:s-2"))
    again = await service.handle(msg(user, "two", pid=f"{user}:s-2"))
    await service.cache.flush_delivered()
    assert redelivered.kind is ReplyKind.ANSWER and earlier(redelivered) == 2
    assert redelivered.conversation_id == first.conversation_id
    assert again.kind is ReplyKind.DUPLICATE
    assert await redis.get(keys.dedup("console", f"{user}:s-2")) == b"done"
    rows = await messages_of(pg, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "one"),
        ("assistant", first.text),
        ("user", "two"),
        ("assistant", redelivered.text),
    ]
    assert await cached_context(redis, service, first) == [
        redelivered.text,
        "two",
        first.text,
        "one",
    ]


async def test_killed_connections_are_retried_and_stored_once(
    make_service: ServiceFactory,
    pg_server: EmbeddedPostgres,
    pg_url: str,
    pg: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = f"faults-{uuid.uuid4().hex[:8]}"
    service = await build(make_service, pg_url, db_pool_pre_ping=False, db_application_name=app)
    user = new_user()
    first = await service.handle(msg(user, "one", pid=f"{user}:k-1"))
    assert first.kind is ReplyKind.ANSWER
    caplog.set_level(logging.WARNING, logger="bot.store.retry")

    assert await terminate(pg_server, app) >= 1
    warm = await service.handle(msg(user, "two", pid=f"{user}:k-2"))  # the one write, retried
    assert await flush_cache(service) > 0
    assert await terminate(pg_server, app) >= 1
    cold = await service.handle(msg(user, "three", pid=f"{user}:k-3"))  # reads and write, retried

    assert warm.kind is ReplyKind.ANSWER and earlier(warm) == 2
    assert cold.kind is ReplyKind.ANSWER and earlier(cold) == 4
    assert cold.conversation_id == first.conversation_id
    assert len([r for r in caplog.records if r.name == "bot.store.retry"]) >= 2, caplog.text
    rows = await messages_of(pg, user)
    assert [r.content for r in rows if r.role == "user"] == ["one", "two", "three"]
    assert len(rows) == 6


async def test_postgres_restarted_mid_conversation_continues_it(
    make_service: ServiceFactory,
    pg_server: EmbeddedPostgres,
    pg_url: str,
    pg: AsyncEngine,
) -> None:
    service = await build(make_service, pg_url)
    user = new_user()
    first = await service.handle(msg(user, "one"))
    await service.handle(msg(user, "two"))

    pg_server.stop()
    pg_server.start()

    third = await service.handle(msg(user, "three"))
    await flush_cache(service)  # and from Postgres alone
    fourth = await service.handle(msg(user, "four"))
    assert third.kind is ReplyKind.ANSWER and earlier(third) == 4
    assert fourth.kind is ReplyKind.ANSWER and earlier(fourth) == 6
    assert third.conversation_id == fourth.conversation_id == first.conversation_id
    rows = await messages_of(pg, user)
    assert [r.content for r in rows if r.role == "user"] == ["one", "two", "three", "four"]


async def failure(engine: AsyncEngine, sql: str, **params: Any) -> BaseException:
    """The exception a real statement raises."""
    try:
        async with engine.begin() as connection:
            await connection.execute(text(sql), params)
    except (DBAPIError, OSError) as exc:
        return exc
    raise AssertionError(f"{sql!r} did not fail")


async def test_only_transient_errors_are_retried(
    pg_server: EmbeddedPostgres, pg_url: str, pg: AsyncEngine
) -> None:
    channel_user = new_user()
    insert_user = "INSERT INTO users (channel_type, channel_user_id) VALUES ('console', :u)"
    async with pg.begin() as connection:
        await connection.execute(text(insert_user), {"u": channel_user})

    duplicate = await failure(pg, insert_user, u=channel_user)
    bad_sql = await failure(pg, "SELECT * FROM no_such_table")
    bad_role = await failure(
        pg,
        "INSERT INTO messages (conversation_id, role, content) VALUES (:c, 'robot', 'x')",
        c=uuid.uuid4(),
    )
    assert isinstance(duplicate, IntegrityError) and not is_transient(duplicate)
    assert isinstance(bad_sql, ProgrammingError) and not is_transient(bad_sql)
    assert isinstance(bad_role, IntegrityError) and not is_transient(bad_role)

    # A connection its server terminated.
    async with pg.connect() as connection:
        backend = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await admin(pg_server, f"SELECT pg_terminate_backend({backend})")
        await asyncio.sleep(0.1)
        try:
            await connection.execute(text("SELECT 1"))
        except DBAPIError as exc:
            terminated: BaseException = exc
        else:
            raise AssertionError("a terminated connection still answered")
    assert is_transient(terminated), repr(terminated)

    # A server that is not there.
    async with engine_on(f"postgresql://postgres@127.0.0.1:{free_port()}/x") as nowhere:
        refused = await failure(nowhere, "SELECT 1")
    assert is_transient(refused), repr(refused)

    # The policy: a bad statement is tried once and surfaces as it is; a transient
    # failure is tried again, then reported as StoreUnavailable.
    retry = DatabaseRetry(attempts=3, deadline=5, initial_wait=0.01)
    calls: list[BaseException] = []

    async def fails_with(exc: BaseException) -> None:
        calls.append(exc)
        raise exc

    with pytest.raises(StoreConflict) as conflict:
        await retry.run(lambda: fails_with(duplicate))  # the query tells a race from a bug
    assert len(calls) == 1 and conflict.value.__cause__ is duplicate
    assert conflict.value.sqlstate == "23505"
    assert conflict.value.constraint == "uq_users_channel_type_channel_user_id"
    calls.clear()
    with pytest.raises(StoreFailed) as failed:
        await retry.run(lambda: fails_with(bad_sql))  # any other refusal: a store error
    assert len(calls) == 1 and failed.value.__cause__ is bad_sql
    assert str(failed.value) == "Postgres refused the work: UndefinedTableError (SQLSTATE 42P01)"
    calls.clear()
    with pytest.raises(StoreUnavailable) as unavailable:
        await retry.run(lambda: fails_with(terminated))
    assert len(calls) == 3 and unavailable.value.__cause__ is terminated


DISK_FULL = """
CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.content = 'fill the disk' THEN
        RAISE EXCEPTION 'could not extend file: No space left on device'
            USING ERRCODE = '53100';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_disk_full BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION test_disk_full();
"""
NO_DISK_FULL = "DROP TRIGGER test_disk_full ON messages; DROP FUNCTION test_disk_full();"


async def run_sql(pg: AsyncEngine, sql: str) -> None:
    async with pg.connect() as connection:
        driver = await connection.get_raw_connection()
        await driver.driver_connection.execute(sql)  # type: ignore[union-attr]


async def test_a_database_error_no_retry_cures_is_told_logged_once_and_released(
    make_service: ServiceFactory,
    pg_url: str,
    pg: AsyncEngine,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await build(make_service, pg_url)
    keys = service.cache.keys
    user = new_user()
    first = await service.handle(msg(user, "one", pid=f"{user}:d-1"))
    assert first.kind is ReplyKind.ANSWER
    caplog.set_level(logging.WARNING)

    await run_sql(pg, DISK_FULL)  # Postgres now refuses this one insert, as with a full disk
    try:
        refused = await service.handle(msg(user, "fill the disk", pid=f"{user}:d-2"))
    finally:
        await run_sql(pg, NO_DISK_FULL)

    assert refused.kind is ReplyKind.UNAVAILABLE and refused.text == UNAVAILABLE_TEXT
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in logged] == ["bot.service"], caplog.text
    assert "DiskFullError (SQLSTATE 53100)" in logged[0].getMessage()
    assert "No space left" not in caplog.text  # the server's text may quote data: not logged
    assert service.stats["store_failed"] == 1 and service.stats["store_unavailable"] == 0
    assert await redis.get(keys.dedup("console", f"{user}:d-2")) == UNFINISHED  # released
    assert not await redis.exists(keys.lock("console", user))
    assert [r.content for r in await messages_of(pg, user)] == ["one", first.text]

    redelivered = await service.handle(msg(user, "fill the disk", pid=f"{user}:d-2"))
    assert redelivered.kind is ReplyKind.ANSWER and earlier(redelivered) == 2
    rows = await messages_of(pg, user)
    assert [r.content for r in rows if r.role == "user"] == ["one", "fill the disk"]
