"""The async SQLAlchemy engine, configured from settings (pool, timeouts, app name)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.config import Settings, normalize_database_url


def create_engine(settings: Settings, url: str, *, pool_size: int | None = None) -> AsyncEngine:
    """An engine on asyncpg whose every call is bounded on the client side.

    A frozen server never enforces its own statement_timeout, so asyncpg's
    command_timeout is what keeps a hung Postgres from holding a message forever.
    """
    return create_async_engine(
        normalize_database_url(url),
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_recycle=settings.db_pool_recycle_seconds,
        pool_timeout=settings.db_pool_timeout_seconds,
        hide_parameters=True,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": settings.db_command_timeout_seconds,
            "server_settings": {
                "application_name": settings.db_application_name,
                "statement_timeout": str(settings.db_statement_timeout_ms),
            },
        },
    )
