"""Builds the long-lived objects once (servers, engine, Redis client, service) and
hands them down; every command that talks to the stores starts here."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.blocklist import BlockedUsers
from bot.blockset import BlockSource
from bot.cache.admin import CacheAdmin
from bot.cache.blocklist import BlocklistCache
from bot.cache.chat_configs import ChatConfigCache
from bot.cache.deployment import NOT_A_CLUSTER, deployment_problem
from bot.cache.experiments import ExperimentCache
from bot.cache.flags import FlagCache
from bot.cache.guard import RedisErrorKind, RedisFault, RedisGuard
from bot.cache.hotstate import HotStateCache
from bot.cache.streams import StreamLedger
from bot.channels import names
from bot.chat_configs import ChatConfigs
from bot.config import Settings
from bot.errors import ConfigError, InfrastructureError, MigrationError, StoreError
from bot.experiments import RunningExperiments
from bot.flags import FeatureFlags
from bot.flagset import FlagSource
from bot.logs import maskable, redact
from bot.metrics import Metrics
from bot.responders import Responder
from bot.responders.factory import build_moderator, build_responder
from bot.responders.timed import TimedResponder
from bot.retention import Maintenance
from bot.service import ConversationService
from bot.store.engine import create_engine, pool_use
from bot.store.migrate import current_revision, head_revision, upgrade_to_head
from bot.store.retry import DatabaseRetry
from bot.store.store import Store
from bot.stores import (
    Endpoints,
    build_store,
    create_redis,
    drop_idle_connections,
    keys_for,
    open_endpoints,
)
from bot.urls import redact_url

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    endpoints: Endpoints
    engine: AsyncEngine
    redis: Redis
    store: Store
    cache: HotStateCache
    service: ConversationService
    metrics: Metrics
    streams: StreamLedger  # replies streaming on screen (bot/cache/streams.py)


def build_service(
    settings: Settings,
    engine: AsyncEngine,
    redis: Redis,
    responder: Responder | None = None,
    metrics: Metrics | None = None,
    flags: FlagSource | None = None,
    blocklist: BlockSource | None = None,
) -> ConversationService:
    """The service wired to the given engine and Redis client (tests use this too).

    Without `flags` (`blocklist`), the service gets FeatureFlags (BlockedUsers) of its
    own, empty until started (`await service.flags.start()`; open_runtime does it). So
    with the experiments it runs (`await service.experiments.start()`, or `.load()`).
    """
    guard = RedisGuard(settings.redis_op_timeout_seconds, settings.redis_breaker_cooldown_seconds)
    # Connections pooled before an outage may be dead (a restarted Redis): once the probe
    # finds Redis back, each of them would trip the breaker again in turn. Registered
    # before the cache's repair hook, so that the repair runs on a fresh connection.
    guard.on_recovery(lambda: drop_idle_connections(redis))
    keys = keys_for(settings)
    cache = HotStateCache(redis, keys, guard, settings.lock_wait_seconds)
    store = build_store(settings, engine)
    if flags is None:
        flag_cache = FlagCache(redis, keys, guard, names.ALL_NAMES)
        flags = FeatureFlags(flag_cache, store.flags, settings.flags_refresh_seconds)
    if blocklist is None:
        blocked_cache = BlocklistCache(redis, keys, guard)
        blocklist = BlockedUsers(blocked_cache, store.blocklist, settings.flags_refresh_seconds)
    responder = responder or build_responder(settings)
    if metrics is not None:
        responder = TimedResponder(responder, metrics.responder_latency)
    chat_cache = ChatConfigCache(redis, keys, guard)
    chats = ChatConfigs(chat_cache, store.chat_configs, settings.channel_config_ttl_seconds)
    moderator = build_moderator(settings)
    experiments = RunningExperiments(
        ExperimentCache(redis, keys, guard), store.experiments, settings.flags_refresh_seconds
    )
    service = ConversationService(
        settings, store, cache, responder, chats, flags, blocklist, moderator, experiments
    )
    if metrics is not None:
        metrics.export_tallies(lambda: service.stats)
        metrics.export_tokens(lambda: service.tokens)
        metrics.export_circuit(lambda: guard.is_open)
        metrics.export_redis_faults(lambda: {f.value: guard.faults[f] for f in RedisFault})
        metrics.export_redis_errors(lambda: {k.value: guard.errors[k] for k in RedisErrorKind})
        metrics.export_postgres_retries(lambda: store.database.retry.retries)
        metrics.export_pool(lambda: pool_use(engine))
    return service


class Schema(Enum):
    """What start-up does about the database schema."""

    MIGRATE = "migrate"  # bring it to the newest revision (MIGRATE_ON_START=true)
    REQUIRE_CURRENT = "require current"  # refuse to start unless it is (a runtime role)
    LEAVE = "leave"  # nothing: the caller migrates (`bot migrate`)


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, schema: Schema = Schema.MIGRATE
) -> AsyncIterator[Runtime]:
    """Start or reach the servers, see to the schema, and build the service; close all
    on exit."""
    async with open_endpoints(settings) as endpoints:
        engine = create_engine(settings, endpoints.database_url)
        redis = create_redis(settings, endpoints.redis_url)
        metrics = Metrics()
        service = build_service(settings, engine, redis, metrics=metrics)
        try:
            await check_postgres(engine, endpoints.database_url, settings)
            await check_redis(redis, endpoints.redis_url, settings.redis_cluster)
            if schema is Schema.MIGRATE:
                await upgrade_to_head(engine, settings.migration_lock_wait_seconds)
            elif schema is Schema.REQUIRE_CURRENT:
                await require_current_schema(engine)
            if schema is not Schema.LEAVE and isinstance(service.flags, FeatureFlags):
                await service.flags.start()  # the table exists now
            if schema is not Schema.LEAVE and isinstance(service.blocklist, BlockedUsers):
                await service.blocklist.start()
            if schema is not Schema.LEAVE and isinstance(service.experiments, RunningExperiments):
                await service.experiments.start()
            await service.chats.start()
            streams = StreamLedger(redis, keys_for(settings), settings.stream_orphan_seconds)
            yield Runtime(
                settings,
                endpoints,
                engine,
                redis,
                service.store,
                service.cache,
                service,
                metrics,
                streams,
            )
        finally:
            await service.chats.stop()
            if isinstance(service.flags, FeatureFlags):
                await service.flags.stop()
            if isinstance(service.blocklist, BlockedUsers):
                await service.blocklist.stop()
            if isinstance(service.experiments, RunningExperiments):
                await service.experiments.stop()
            await service.responder.aclose()
            if service.moderator is not None:
                await service.moderator.aclose()
            await redis.aclose()
            await engine.dispose()


def build_maintenance(runtime: Runtime) -> Maintenance:
    """The worker's upkeep of messages: partitions ahead, and retention if set."""
    settings, store = runtime.settings, runtime.store
    cache = CacheAdmin(runtime.redis, keys_for(settings), runtime.cache.guard)
    return Maintenance(
        store.partitions,
        store.housekeeping,
        cache,
        runtime.metrics,
        ahead=settings.partitions_ahead,
        retention_days=settings.retention_days,
        batch=settings.purge_batch_size,
        interval=settings.maintenance_interval_seconds,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )


async def require_current_schema(engine: AsyncEngine) -> None:
    """Refuse to serve from a schema other than the one this release was written for."""
    try:
        current = await current_revision(engine)
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise MigrationError(
            f"cannot read the schema revision ({type(cause).__name__}); the runtime role "
            "needs SELECT on alembic_version (docs/deployment.md)"
        ) from exc
    head = head_revision()
    if current != head:
        raise MigrationError(
            f"the database schema is at revision {current or 'none (empty database)'} but "
            f"this release needs {head}: run `bot migrate` with the migration role first "
            "(or set MIGRATE_ON_START=true to migrate at start)"
        )


async def check_postgres(engine: AsyncEngine, url: str, settings: Settings) -> None:
    retry = DatabaseRetry(attempts=3, deadline=settings.db_connect_timeout_seconds * 2)

    async def ping() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    try:
        await retry.run(ping)
    except StoreError as exc:
        # Printed by the command line, not logged: masked here, not by the log filter.
        reason = redact(postgres_failure(exc), maskable(settings.secrets()))
        raise InfrastructureError(
            f"cannot reach Postgres at {redact_url(url)} ({reason}); "
            "check DATABASE_URL and that the server is running"
        ) from None


def postgres_failure(exc: BaseException) -> str:
    """The driver's error under our StoreError, and the likely TLS mistake behind it."""
    cause = exc.__cause__ or exc
    orig = getattr(cause, "orig", None)
    if orig is not None:  # SQLAlchemy's wrapper, around its adapter of asyncpg's error
        cause = orig.__cause__ or orig
    lines = str(cause).strip().splitlines()
    detail = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return f"{detail}; sslrootcert must name the CA that signed the server's certificate"
    if "unsupported startup parameter" in detail:
        return f"{detail}; behind a transaction pooler (PgBouncer)? set DATABASE_POOLER=transaction"
    if "no encryption" in detail:
        return f"{detail}; the server wants TLS: add ?sslmode=require (or verify-full)"
    return detail


async def check_redis(redis: Redis, url: str, cluster: bool = False) -> None:
    """A missing Redis only degrades the bot, so this warns instead of failing; a Redis
    the bot cannot run on as configured (a cluster node without REDIS_CLUSTER, a
    standalone one with it, a replica) is a configuration error."""
    try:
        await asyncio.wait_for(redis.ping(), timeout=2)
        info = await asyncio.wait_for(redis.info(), timeout=2)
        problem = deployment_problem(info, cluster)
    except RedisClusterException as exc:
        if "not enabled" not in str(exc):  # "Cluster mode is not enabled on this node"
            raise ConfigError(f"cannot use the Redis Cluster at {redact_url(url)}: {exc}") from exc
        problem = NOT_A_CLUSTER
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning(
            "cannot reach Redis at %s (%s); starting anyway, answering from Postgres",
            redact_url(url),
            redis_failure(url, exc),
        )
        return
    if problem is not None:
        raise ConfigError(f"{problem} ({redact_url(url)})")


def redis_failure(url: str, exc: BaseException) -> str:
    """What went wrong, and the likely TLS mistake behind it: a plain redis:// URL to a
    TLS port, or a rediss:// URL without the CA of the server's certificate."""
    lines = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    scheme = urlsplit(url).scheme
    dropped = isinstance(exc, RedisConnectionError) and not isinstance(exc, AuthenticationError)
    if scheme == "redis" and dropped and "connecting to" not in detail:
        # A TLS port drops a plaintext client; a refused connection says "connecting to".
        return f"{detail}; if that server speaks TLS, the URL must start with rediss://"
    if scheme == "rediss" and "CERTIFICATE_VERIFY_FAILED" in detail:
        return (
            f"{detail}; set ssl_ca_certs=/path/to/ca.pem in REDIS_URL to the CA that signed "
            "the server's certificate"
        )
    return detail
