"""The two stores, reached: Postgres and Redis as configured (or embedded ones under
DATA_DIR), the Redis client, the key names, and the store's queries. The worker's
runtime (bot/runtime.py) and `bot ops` (bot/ops/context.py) start from here; ops
needs nothing more, so it loads no service, responder or channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.config import Settings
from bot.store.retry import DatabaseRetry
from bot.store.store import Store

log = logging.getLogger(__name__)


class _Server(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    redis_url: str
    database_read_url: str | None = None  # a replica for ops reads (never embedded)


@asynccontextmanager
async def open_endpoints(settings: Settings) -> AsyncIterator[Endpoints]:
    """The configured servers, or embedded ones under DATA_DIR for what is not set."""
    async with AsyncExitStack() as stack:
        database_url = _secret(settings.database_url)
        redis_url = _secret(settings.redis_url)
        if redis_url is None and settings.redis_sentinels:
            redis_url = SENTINEL_URL  # the sentinels say where; nothing to embed
        if database_url is None or redis_url is None:
            from bot import embedded  # the optional extra; production never needs it

            _point_at_old_default(settings)
            if database_url is None:
                server = embedded.EmbeddedPostgres(settings.data_dir / "postgres")
                await _start(stack, server)
                database_url = server.url
            if redis_url is None:
                redis_server = embedded.EmbeddedRedis(settings.data_dir / "redis")
                await _start(stack, redis_server)
                redis_url = redis_server.url
        yield Endpoints(database_url, redis_url, _secret(settings.database_read_url))


OLD_DEFAULT_DATA_DIR = Path(".data")  # DATA_DIR's default before the per-user directory


def _point_at_old_default(settings: Settings) -> None:
    """Data an earlier version kept in ./.data is not lost: say where it is, and how to
    keep using it, rather than start an empty database beside it without a word."""
    if "data_dir" in settings.model_fields_set:
        return
    old = OLD_DEFAULT_DATA_DIR / "postgres" / "PG_VERSION"
    if old.exists() and OLD_DEFAULT_DATA_DIR.resolve() != settings.data_dir.resolve():
        log.warning(
            "%s holds the data of an earlier version (DATA_DIR's default was .data); this "
            "run keeps its data in %s. Set DATA_DIR=.data to go on with the old data",
            OLD_DEFAULT_DATA_DIR.absolute(),
            settings.data_dir,
        )


async def _start(stack: AsyncExitStack, server: _Server) -> None:
    await asyncio.to_thread(server.start)  # EmbeddedServerError, an InfrastructureError
    stack.push_async_callback(asyncio.to_thread, server.stop)


SENTINEL_URL = "redis://sentinel/0"  # REDIS_URL's stand-in with REDIS_SENTINELS alone


def create_redis(settings: Settings, url: str) -> Redis:
    """The Redis client: of the server REDIS_URL names, of the primary the sentinels
    name (REDIS_SENTINELS), followed through failovers, or of a Redis Cluster
    (REDIS_CLUSTER)."""
    options: dict[str, Any] = {
        "max_connections": settings.redis_max_connections,
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_socket_connect_timeout_seconds,
        "health_check_interval": settings.redis_health_check_interval_seconds,
    }
    if settings.redis_cluster:
        return _cluster_client(settings, url, options)
    if not settings.redis_sentinels:
        return Redis.from_url(url, **options)
    # REDIS_URL's password, database and TLS options, for the primary; not its host.
    connection: dict[str, Any] = {
        k: v for k, v in parse_url(url).items() if k not in ("host", "port")
    }
    if connection.pop("connection_class", None) is SSLConnection:
        connection["ssl"] = True
    sentinels = Sentinel(
        settings.redis_sentinels,
        sentinel_kwargs={
            "socket_timeout": settings.redis_socket_timeout_seconds,
            "socket_connect_timeout": settings.redis_socket_connect_timeout_seconds,
        },
    )
    assert settings.redis_sentinel_master is not None  # checked with the settings
    client: Redis = sentinels.master_for(
        settings.redis_sentinel_master, redis_class=Redis, **connection, **options
    )
    return client


def _cluster_client(settings: Settings, url: str, options: dict[str, Any]) -> Redis:
    seeds = [ClusterNode(host, port) for host, port in settings.redis_cluster_nodes or ()]
    client = RedisCluster.from_url(url, startup_nodes=seeds or None, **options)
    # It speaks the commands the bot sends (scripts whose keys share a slot, pipelines
    # split per node, SCAN over every primary) with the same signatures: the cache is
    # written once against Redis (DESIGN.md, "Redis keys": hash tags, bot/cache/keys.py).
    return cast(Redis, client)


async def drop_idle_connections(redis: Redis) -> None:
    """Close the connections no call is using: the client opens fresh ones."""
    if isinstance(redis, RedisCluster):  # a pool per node
        for node in redis.get_nodes():
            await node.disconnect_free_connections()
        return
    await redis.connection_pool.disconnect(inuse_connections=False)


def keys_for(settings: Settings) -> Keys:
    """Key names and TTLs (DESIGN.md, "Redis keys") from the settings."""
    return Keys(
        prefix=settings.redis_key_prefix,
        session_ttl=settings.session_ttl_seconds,
        context_ttl=settings.context_ttl_seconds,
        context_messages=settings.context_messages,
        active_window=settings.active_window_seconds,
        channel_config_ttl=settings.channel_config_ttl_seconds,
        dedup_ttl=settings.dedup_ttl_seconds,
        dedup_processing_ttl=settings.dedup_processing_seconds,
        lock_ttl=settings.lock_ttl_seconds,
        delivery_lease=settings.delivery_lease_seconds,
        cluster=settings.redis_cluster,
    )


def build_store(settings: Settings, engine: AsyncEngine) -> Store:
    """Every query of the bot on `engine`, under the Postgres retry policy."""
    retry = DatabaseRetry(settings.db_retry_attempts, settings.db_retry_deadline_seconds)
    return Store.on(engine, retry)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
