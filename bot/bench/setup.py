"""The bench's own database and key prefix, the stored history, and cleaning up after.

The bench never touches real data: it creates a fresh database `bot_bench_<random>`
on the configured server and drops it at the end, and uses a Redis key prefix
`bench:<random>:` whose keys it deletes at the end.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis

from bot.config import Settings
from bot.errors import ConfigError, InfrastructureError
from bot.retention import ensure_partitions
from bot.runtime import check_redis
from bot.store.engine import create_engine
from bot.store.migrate import upgrade_to_head
from bot.store.partitions import month_start
from bot.store.retry import DatabaseRetry
from bot.store.store import Store
from bot.stores import create_redis, open_endpoints
from bot.urls import asyncpg_dsn, redact_url

log = logging.getLogger(__name__)

HISTORY_CHANNEL = "bench-history"
HISTORY_PER_CONVERSATION = 100
LOADING_TIMEOUT_SECONDS = 300


def with_database(url: str, name: str) -> str:
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass(frozen=True, slots=True)
class BenchServers:
    """Where one bench run works: its own database and key prefix on the servers."""

    database_url: str
    redis_url: str
    control: Redis  # for the bench itself: waiting, counting, cleaning up
    database: str
    prefix: str


@asynccontextmanager
async def bench_servers(settings: Settings) -> AsyncIterator[BenchServers]:
    """The configured (or embedded) servers with a fresh database `bot_bench_<random>`
    and key prefix `bench:<random>:`, both removed at the end."""
    run_id = uuid.uuid4().hex[:10]
    name, prefix = f"bot_bench_{run_id}", f"bench:{run_id}:"
    if settings.redis_cluster and settings.redis_url is None:
        raise ConfigError("--redis-cluster needs REDIS_URL naming a node of the Redis Cluster")
    async with (
        open_endpoints(settings) as endpoints,
        bench_database(settings, endpoints.database_url, name) as url,
    ):
        control = create_redis(settings, endpoints.redis_url)  # a cluster's, with REDIS_CLUSTER
        try:
            await check_redis(control, endpoints.redis_url, settings.redis_cluster)
        except BaseException:
            await control.aclose()  # nothing written there yet, nothing to clean
            raise
        try:
            await wait_until_loaded(control)
            yield BenchServers(url, endpoints.redis_url, control, name, prefix)
        finally:
            await delete_keys(control, prefix)
            await control.aclose()


@asynccontextmanager
async def bench_database(settings: Settings, server_url: str, name: str) -> AsyncIterator[str]:
    """Create database `name` on the server of `server_url`, migrate it, drop it after."""
    admin = await _admin(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError as exc:
        await admin.close()
        raise InfrastructureError(
            f"cannot create the bench database {name} on {redact_url(server_url)}: {exc}; "
            "the bench needs a role that may CREATE DATABASE"
        ) from None
    url = with_database(server_url, name)
    try:
        engine = create_engine(settings, url, pool_size=1)
        try:
            await upgrade_to_head(engine)
        finally:
            await engine.dispose()
        yield url
    finally:
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _admin(server_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(asyncpg_dsn(server_url))
    except (OSError, asyncpg.PostgresError) as exc:
        raise InfrastructureError(
            f"cannot reach Postgres at {redact_url(server_url)} ({exc.__class__.__name__})"
        ) from None


async def history_partitions(settings: Settings, database_url: str) -> None:
    """The monthly partitions the history goes into (it starts 30 days back), as the
    worker would have made them when it was written."""
    engine = create_engine(settings, database_url, pool_size=1)
    try:
        store = Store.on(engine, DatabaseRetry(3, 30))
        start = month_start(datetime.now(UTC) - timedelta(days=31))
        await ensure_partitions(store.partitions, 1, start)
    finally:
        await engine.dispose()


async def insert_history(database_url: str, messages: int) -> None:
    """`messages` stored messages in conversations of other users, written server-side
    (INSERT … SELECT generate_series), with their indexes and the claims of their
    platform events, then VACUUM ANALYZE."""
    if messages <= 0:
        return
    conversations = -(-messages // HISTORY_PER_CONVERSATION)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """
            INSERT INTO users (channel_type, channel_user_id, username)
            SELECT $1::text, 'history-' || n, 'history user ' || n FROM generate_series(1, $2) AS n
            """,
            HISTORY_CHANNEL,
            conversations,
        )
        await connection.execute(
            """
            INSERT INTO conversations (user_id, channel_type, started_at, last_activity)
            SELECT id, $1::text, now() - interval '30 days', now() - interval '1 day'
            FROM users WHERE channel_type = $1::text
            """,
            HISTORY_CHANNEL,
        )
        await connection.execute(
            """
            INSERT INTO messages (conversation_id, role, content, timestamp, token_count,
                                  channel_type, platform_message_id, model_used)
            SELECT c.id,
                   CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END,
                   'stored message ' || n || ' of an earlier conversation, about as long as '
                       || 'a chat message usually is, give or take a few words',
                   c.started_at + n * interval '1 minute',
                   24,
                   $1::text,
                   CASE WHEN n % 2 = 1 THEN c.id::text || '-' || n END,
                   CASE WHEN n % 2 = 0 THEN 'echo' END
            FROM (SELECT id, started_at, row_number() OVER (ORDER BY id) AS k
                  FROM conversations WHERE channel_type = $1::text) AS c
            CROSS JOIN generate_series(1, $2) AS n
            WHERE (c.k - 1) * $2 + n <= $3
            """,
            HISTORY_CHANNEL,
            HISTORY_PER_CONVERSATION,
            messages,
        )
        # The events' claims, as the service writes them (message_events, revision 0007).
        await connection.execute(
            """
            INSERT INTO message_events (channel_type, platform_message_id, message_id,
                                        message_timestamp)
            SELECT channel_type, platform_message_id, id, timestamp FROM messages
            WHERE channel_type = $1::text AND platform_message_id IS NOT NULL
            """,
            HISTORY_CHANNEL,
        )
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


async def wait_until_loaded(redis: Redis) -> None:
    """Wait while Redis loads its dataset (a restarted embedded Redis replays its AOF)."""
    async with asyncio.timeout(LOADING_TIMEOUT_SECONDS):
        while (await redis.info("persistence")).get("loading"):  # noqa: ASYNC110 - polling Redis
            await asyncio.sleep(0.1)


async def delete_keys(redis: Redis, prefix: str) -> int:
    """Delete every key under `prefix` (SCAN, then DEL in batches); returns how many."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await redis.delete(*batch)
            batch = []
    if batch:
        deleted += await redis.delete(*batch)
    return deleted
