"""Partitions made ahead and retention (bot/retention.py) on a database of their own:
whole old months detached and dropped with their claims, the boundary trimmed, empty
inactive conversations removed, the Redis contexts of touched conversations dropped,
one run per interval across workers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.admin import CacheAdmin
from bot.cache.guard import RedisGuard
from bot.config import Settings
from bot.metrics import Metrics
from bot.retention import Maintenance, Retention, ensure_partitions
from bot.store.database import Database
from bot.store.housekeeping import HousekeepingQueries
from bot.store.partitions import PartitionQueries
from bot.store.retry import DatabaseRetry
from bot.stores import keys_for
from tests.store.conftest import NewDatabase
from tests.support import engine_on, execute, fetch, migrate_to_head

ACTIVE, CLOSED = uuid.uuid4(), uuid.uuid4()
CUTOFF = datetime(2021, 3, 15, tzinfo=UTC)
# Jan 2021 has a partition of its own (dropped whole); March's rows before the cutoff
# sit in the default partition (trimmed); April's stay.
ROWS = [
    (ACTIVE, "2021-01-10", "old-1"),
    (ACTIVE, "2021-03-01", "old-2"),
    (ACTIVE, "2021-04-01", None),
    (CLOSED, "2021-01-20", "old-3"),
]


@pytest.fixture
async def engine(new_database: NewDatabase) -> AsyncIterator[AsyncEngine]:
    url = await new_database()
    await migrate_to_head(url)
    async with engine_on(url) as engine:
        yield engine


@pytest.fixture
def cache(settings: Settings, redis: Redis) -> CacheAdmin:
    return CacheAdmin(redis, keys_for(settings), RedisGuard.one_shot(2.0))


async def seed(engine: AsyncEngine) -> None:
    await execute(
        engine,
        """INSERT INTO users (id, channel_type, channel_user_id) VALUES (:u, 'slack', 'old');
           """,
        u=(user := uuid.uuid4()),
    )
    for conversation, active in ((ACTIVE, True), (CLOSED, False)):
        await execute(
            engine,
            "INSERT INTO conversations (id, user_id, channel_type, is_active, last_activity) "
            "VALUES (:c, :u, 'slack', :a, :t)",
            c=conversation,
            u=user,
            a=active,
            t=datetime(2021, 1, 20, tzinfo=UTC),
        )
    for conversation, day, event in ROWS:
        await execute(
            engine,
            """WITH m AS (
                   INSERT INTO messages (conversation_id, role, content, channel_type,
                                         timestamp, platform_message_id)
                   VALUES (:c, 'user', 'hi', 'slack', :t, :e)
                   RETURNING id, timestamp)
               INSERT INTO message_events
               SELECT 'slack', :e, id, timestamp FROM m WHERE CAST(:e AS text) IS NOT NULL""",
            c=conversation,
            t=datetime.fromisoformat(day).replace(tzinfo=UTC),
            e=event,
        )


def queries(engine: AsyncEngine) -> tuple[PartitionQueries, HousekeepingQueries]:
    database = Database(engine, DatabaseRetry(3, 10))
    return PartitionQueries(database), HousekeepingQueries(database)


async def test_retention_drops_old_months_trims_the_rest_and_the_caches(
    engine: AsyncEngine, cache: CacheAdmin, redis: Redis
) -> None:
    partitions, housekeeping = queries(engine)
    await partitions.create_month(datetime(2021, 1, 1, tzinfo=UTC))
    await seed(engine)
    context = cache.keys.context(ACTIVE)
    await redis.rpush(context, "stale")

    result = await Retention(partitions, housekeeping, cache, batch=1).run(CUTOFF)

    assert result.months_dropped == ["messages_p2021_01"]
    assert (result.messages, result.conversations, result.contexts) == (3, 1, 1)
    left = await fetch(engine, "SELECT conversation_id, timestamp FROM messages")
    assert [(r.conversation_id, r.timestamp.month) for r in left] == [(ACTIVE, 4)]
    assert await fetch(engine, "SELECT * FROM message_events") == []
    conversations = await fetch(engine, "SELECT id FROM conversations")
    assert [r.id for r in conversations] == [ACTIVE]  # the active one stays, emptied or not
    assert not await redis.exists(context)
    names = [p.name for p in await partitions.partitions()]
    assert "messages_p2021_01" not in names and "messages_default" in names


async def test_retention_deletes_old_reply_posts_and_ratings(engine: AsyncEngine) -> None:
    partitions, housekeeping = queries(engine)
    await seed(engine)
    (user,) = await fetch(engine, "SELECT id FROM users")
    for age, reply in (("2021-01-10", uuid.uuid4()), ("2021-04-01", uuid.uuid4())):
        at = datetime.fromisoformat(age).replace(tzinfo=UTC)
        await execute(
            engine, "INSERT INTO reply_posts VALUES ('telegram', '42', :p, :m, :t)",
            p=age, m=reply, t=at,
        )  # fmt: skip
        await execute(
            engine, "INSERT INTO feedback VALUES (:m, :u, 1, :t, :t)", m=reply, u=user.id, t=at
        )

    result = await Retention(partitions, housekeeping, None, batch=1).run(CUTOFF)

    assert result.ratings == 2  # the old post and the old rating
    posts = await fetch(engine, "SELECT post_id FROM reply_posts")
    ratings = await fetch(engine, "SELECT updated_at FROM feedback")
    assert [r.post_id for r in posts] == ["2021-04-01"]
    assert [r.updated_at.month for r in ratings] == [4]


async def test_a_month_made_late_takes_its_rows_and_claims_from_the_default(
    engine: AsyncEngine,
) -> None:
    partitions, _ = queries(engine)
    await seed(engine)  # January 2021 has no partition: its rows are in the default one

    assert await partitions.create_month(datetime(2021, 1, 1, tzinfo=UTC))
    assert not await partitions.create_month(datetime(2021, 1, 1, tzinfo=UTC))

    rows = await fetch(
        engine,
        """SELECT m.tableoid::regclass::text AS partition, e.platform_message_id
           FROM messages m LEFT JOIN message_events e
             ON e.message_id = m.id AND e.message_timestamp = m.timestamp
           ORDER BY m.timestamp""",
    )
    assert [tuple(r) for r in rows] == [
        ("messages_p2021_01", "old-1"),
        ("messages_p2021_01", "old-3"),
        ("messages_default", "old-2"),
        ("messages_default", None),
    ]


async def test_partitions_are_made_ahead_once(engine: AsyncEngine) -> None:
    partitions, _ = queries(engine)
    now = datetime(2030, 11, 20, tzinfo=UTC)

    made = await ensure_partitions(partitions, 2, now)

    assert [f"{m:%Y-%m}" for m in made] == ["2030-11", "2030-12", "2031-01"]
    assert await ensure_partitions(partitions, 2, now) == []
    found = {p.name: (p.lower, p.upper) for p in await partitions.partitions()}
    assert found["messages_p2030_12"] == (
        datetime(2030, 12, 1, tzinfo=UTC),
        datetime(2031, 1, 1, tzinfo=UTC),
    )


async def test_one_worker_runs_retention_per_interval(
    engine: AsyncEngine, cache: CacheAdmin
) -> None:
    partitions, housekeeping = queries(engine)
    await seed(engine)
    metrics = Metrics()

    def worker(name: str) -> Maintenance:
        return Maintenance(partitions, housekeeping, cache, metrics, 1, 30, 100, 60.0, name)

    first, second = await worker("a").tick(), await worker("b").tick()

    assert first is not None and first.messages == len(ROWS)  # all older than 30 days
    assert second is None
    assert metrics.retention_runs._value.get() == 1
    assert metrics.retention_deleted.labels("messages")._value.get() == len(ROWS)
