"""Alembic environment: async, and reading DATABASE_URL through the bot's settings.

`bot migrate` passes an open connection in `config.attributes["connection"]`; the
plain `alembic` command line builds its own engine from the same settings.
"""

from __future__ import annotations

import asyncio
import logging.config

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from alembic import context
from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.store.engine import create_engine
from bot.store.models import Base, modelled
from bot.urls import redact_url, url_passwords

config = context.config
if config.config_file_name is not None and not config.attributes.get("connection"):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=modelled,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(settings: Settings, url: str) -> None:
    engine = create_engine(settings, url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def _settings() -> tuple[Settings, str]:
    """The bot's settings and DATABASE_URL, or exit with one line saying what is wrong."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(f"alembic: {exc}") from None
    if settings.database_url is None:
        raise SystemExit(
            "alembic: DATABASE_URL is not set; alembic needs it (or use `bot migrate`)"
        )
    return settings, settings.database_url.get_secret_value()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    settings, url = _settings()
    try:
        asyncio.run(_run_with_own_engine(settings, url))
    except (SQLAlchemyError, OSError) as exc:
        # One line, with the URL's password masked: the driver's own text may hold the URL.
        orig = getattr(exc, "orig", None)
        cause = (orig.__cause__ or orig) if orig is not None else exc
        raise SystemExit(
            f"alembic: failed on {redact_url(url)}: {cause.__class__.__name__}: "
            f"{_masked(str(cause), url)}"
        ) from None


def _masked(text: str, url: str) -> str:
    for password in url_passwords(url):
        text = text.replace(password, "***")
    return text.splitlines()[0] if text else text


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
