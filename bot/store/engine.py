"""The async SQLAlchemy engine, configured from settings (pool, timeouts, app name)."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from bot.config import Settings
from bot.metrics import PoolUse
from bot.urls import database_connect_args

_IDLE_SINCE = "bot_idle_since"  # where a pooled connection remembers its last check-in


def create_engine(settings: Settings, url: str, *, pool_size: int | None = None) -> AsyncEngine:
    """An engine on asyncpg whose every call is bounded on the client side.

    A frozen server never enforces its own statement_timeout, so asyncpg's
    command_timeout is what keeps a hung Postgres from holding a message forever.
    """
    ping_every_checkout = settings.db_pool_pre_ping and settings.db_pool_ping_idle_seconds == 0
    url, tls_args = database_connect_args(url)  # certificate files become an SSLContext
    engine = create_async_engine(
        url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=ping_every_checkout,
        pool_recycle=settings.db_pool_recycle_seconds,
        pool_timeout=settings.db_pool_timeout_seconds,
        hide_parameters=True,
        connect_args={
            **tls_args,
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": settings.db_command_timeout_seconds,
            **_session_args(settings),
        },
    )
    if settings.db_pool_pre_ping and not ping_every_checkout:
        ping_idle_connections(engine, settings.db_pool_ping_idle_seconds)
    return engine


def pool_use(engine: AsyncEngine) -> PoolUse | None:
    """How much of the engine's connection pool is in use now (None: not a QueuePool)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return None
    # overflow() counts from -size: connections opened beyond size, if positive.
    # _max_overflow is the pool's own record of DB_MAX_OVERFLOW (no public accessor).
    return PoolUse(pool.size(), pool.checkedout(), max(pool.overflow(), 0), pool._max_overflow)


def _session_args(settings: Settings) -> dict[str, Any]:
    """The session's settings: the app name and statement timeout, sent at start-up to
    Postgres, or through a transaction pooler as that pooler allows."""
    server_settings = {"application_name": settings.db_application_name}
    if settings.database_pooler == "transaction":
        return {"server_settings": server_settings, **_pooled(settings.db_statement_timeout_ms)}
    server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    return {"server_settings": server_settings}


def _pooled(statement_timeout_ms: int) -> dict[str, Any]:
    """asyncpg's connect arguments for a transaction pooler (DATABASE_POOLER=transaction).

    Consecutive transactions of one connection may run on different server connections,
    and PgBouncer refuses startup parameters it does not track. So: no statement_timeout
    at start-up (it is set in each transaction, in BEGIN's own round trip), and no named
    prepared statement, which would outlive its transaction on a server connection
    another client gets next: asyncpg and SQLAlchemy prepare unnamed ones, each used
    within the transaction that parsed it.
    """
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "connection_class": _with_transaction_timeout(statement_timeout_ms),
    }


def _with_transaction_timeout(statement_timeout_ms: int) -> type[asyncpg.Connection]:
    set_timeout = f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"

    class TimeoutPerTransaction(asyncpg.Connection):  # type: ignore[misc]
        """Sends `SET LOCAL statement_timeout` with every BEGIN, in one simple query."""

        async def execute(self, query: str, *args: Any, **options: Any) -> str:
            if not args and query.startswith("BEGIN"):
                query = f"{query.rstrip(';')}; {set_timeout}"
            result: str = await super().execute(query, *args, **options)
            return result

    return TimeoutPerTransaction


def ping_idle_connections(engine: AsyncEngine, idle_seconds: float) -> None:
    """Ping a pooled connection on checkout only if it sat idle for `idle_seconds`.

    SQLAlchemy's pre-ping costs the asyncpg dialect three round trips (BEGIN, ping,
    ROLLBACK) on every checkout, more than the one statement a warm message writes.
    A connection handed back moments ago is as good as a ping; one that died since
    fails with a disconnect, which invalidates the pool and is retried.
    """
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine, "checkin")
    def remember_idle_since(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # new, or in use moments ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise InvalidatePoolError(f"idle connection is gone: {type(exc).__name__}") from exc
            raise
