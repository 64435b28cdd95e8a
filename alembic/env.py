"""Alembic environment: async, and reading DATABASE_URL through the bot's settings.

`bot migrate` passes an open connection in `config.attributes["connection"]`; the
plain `alembic` command line builds its own engine from the same settings.
"""

from __future__ import annotations

import asyncio
import logging.config

from sqlalchemy.engine import Connection

from alembic import context
from bot.config import load_settings
from bot.errors import ConfigError
from bot.store.engine import create_engine
from bot.store.models import Base

config = context.config
if config.config_file_name is not None and not config.attributes.get("connection"):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine() -> None:
    settings = load_settings()
    if settings.database_url is None:
        raise ConfigError("DATABASE_URL is not set; alembic needs it (or use `bot migrate`)")
    engine = create_engine(settings, settings.database_url.get_secret_value(), pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
    else:
        asyncio.run(_run_with_own_engine())


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
