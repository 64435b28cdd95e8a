"""Builds the long-lived objects once (servers, engine, Redis client, service) and
hands them down; every command that talks to the stores starts here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.flags import FlagCache
from bot.cache.guard import RedisGuard
from bot.cache.hotstate import HotStateCache
from bot.cache.keys import Keys
from bot.channels import registry
from bot.config import Settings, redact_url
from bot.errors import InfrastructureError, StoreUnavailable
from bot.flags import FeatureFlags, FlagSource
from bot.metrics import Metrics
from bot.responders import Responder
from bot.responders.factory import build_responder
from bot.responders.timed import TimedResponder
from bot.service import ConversationService
from bot.store.engine import create_engine
from bot.store.migrate import upgrade_to_head
from bot.store.queries import Store
from bot.store.retry import DatabaseRetry

log = logging.getLogger(__name__)


class _Server(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    redis_url: str


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


@asynccontextmanager
async def open_endpoints(settings: Settings) -> AsyncIterator[Endpoints]:
    """The configured servers, or embedded ones under DATA_DIR for what is not set."""
    async with AsyncExitStack() as stack:
        database_url = _secret(settings.database_url)
        redis_url = _secret(settings.redis_url)
        if database_url is None or redis_url is None:
            from bot import embedded  # the optional extra; production never needs it

            if database_url is None:
                server = embedded.EmbeddedPostgres(settings.data_dir / "postgres")
                await _start(stack, server)
                database_url = server.url
            if redis_url is None:
                redis_server = embedded.EmbeddedRedis(settings.data_dir / "redis")
                await _start(stack, redis_server)
                redis_url = redis_server.url
        yield Endpoints(database_url, redis_url)


async def _start(stack: AsyncExitStack, server: _Server) -> None:
    from bot.embedded import EmbeddedServerError

    try:
        await asyncio.to_thread(server.start)
    except EmbeddedServerError as exc:
        raise InfrastructureError(str(exc)) from exc
    stack.push_async_callback(asyncio.to_thread, server.stop)


def create_redis(settings: Settings, url: str) -> Redis:
    return Redis.from_url(
        url,
        max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_socket_connect_timeout_seconds,
        health_check_interval=settings.redis_health_check_interval_seconds,
    )


def build_service(
    settings: Settings,
    engine: AsyncEngine,
    redis: Redis,
    responder: Responder | None = None,
    metrics: Metrics | None = None,
    flags: FlagSource | None = None,
) -> ConversationService:
    """The service wired to the given engine and Redis client (tests use this too).

    Without `flags`, the service gets FeatureFlags of its own, empty until started
    (`await service.flags.start()`; open_runtime does it).
    """
    retry = DatabaseRetry(settings.db_retry_attempts, settings.db_retry_deadline_seconds)
    guard = RedisGuard(settings.redis_op_timeout_seconds, settings.redis_breaker_cooldown_seconds)
    keys = Keys.from_settings(settings)
    cache = HotStateCache(redis, keys, guard)
    store = Store(engine, retry)
    if flags is None:
        flag_cache = FlagCache(redis, keys, guard, registry.ALL_NAMES)
        flags = FeatureFlags(flag_cache, store, settings.flags_refresh_seconds)
    responder = responder or build_responder(settings)
    if metrics is not None:
        responder = TimedResponder(responder, metrics.responder_latency)
    service = ConversationService(settings, store, cache, responder, flags)
    if metrics is not None:
        metrics.export_tallies(lambda: service.stats)
    return service


@asynccontextmanager
async def open_runtime(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Runtime]:
    """Start or reach the servers, migrate, and build the service; close all on exit."""
    async with open_endpoints(settings) as endpoints:
        engine = create_engine(settings, endpoints.database_url)
        redis = create_redis(settings, endpoints.redis_url)
        metrics = Metrics()
        service = build_service(settings, engine, redis, metrics=metrics)
        try:
            await check_postgres(engine, endpoints.database_url, settings)
            await check_redis(redis, endpoints.redis_url)
            if migrate:
                await upgrade_to_head(engine, settings.migration_lock_wait_seconds)
                if isinstance(service.flags, FeatureFlags):  # the table exists now
                    await service.flags.start()
            yield Runtime(
                settings, endpoints, engine, redis, service.store, service.cache, service, metrics
            )
        finally:
            if isinstance(service.flags, FeatureFlags):
                await service.flags.stop()
            await service.responder.aclose()
            await redis.aclose()
            await engine.dispose()


async def check_postgres(engine: AsyncEngine, url: str, settings: Settings) -> None:
    retry = DatabaseRetry(attempts=3, deadline=settings.db_connect_timeout_seconds * 2)

    async def ping() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    try:
        await retry.run(ping)
    except StoreUnavailable as exc:
        raise InfrastructureError(
            f"cannot reach Postgres at {redact_url(url)} ({exc.__cause__.__class__.__name__}); "
            "check DATABASE_URL and that the server is running"
        ) from None


async def check_redis(redis: Redis, url: str) -> None:
    """A missing Redis only degrades the bot, so this warns instead of failing."""
    try:
        await asyncio.wait_for(redis.ping(), timeout=2)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning(
            "cannot reach Redis at %s (%s); starting anyway, answering from Postgres",
            redact_url(url),
            exc.__class__.__name__,
        )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
