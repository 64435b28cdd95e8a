"""Apply Alembic migrations from code, under a Postgres advisory lock.

Several workers starting at once all call `upgrade_to_head`; the lock makes the
first one migrate and the others wait, then find nothing to do.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alembic import command
from bot.errors import MigrationError

log = logging.getLogger(__name__)

# Any fixed 64-bit number; it names "the bot's schema migration" among advisory locks.
MIGRATION_LOCK_ID = 0x6368_6174_626F_7401
DEFAULT_LOCK_WAIT_SECONDS = 600.0  # the MIGRATION_LOCK_WAIT_SECONDS setting's default
_POLL_MAX_SECONDS = 1.0


def alembic_config() -> Config:
    """The Alembic config of this checkout, found beside the package or in the cwd."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        ini = root / "alembic.ini"
        if ini.is_file():
            config = Config(str(ini))
            config.set_main_option("script_location", str(root / "alembic"))
            return config
    raise MigrationError("alembic.ini not found beside the bot package or in the current directory")


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> set[str]:
    """Every revision this code has a migration for."""
    script = ScriptDirectory.from_config(alembic_config())
    return {revision.revision for revision in script.walk_revisions()}


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def upgrade_to_head(
    engine: AsyncEngine, lock_wait: float = DEFAULT_LOCK_WAIT_SECONDS
) -> str | None:
    """Bring the schema to the newest revision; return the revision now in place.

    Every pending migration runs in one transaction, the one that holds the migration
    lock: a transaction-level lock, which ends with it, so neither a failed migration
    nor a transaction pooler's server connection can keep it. Waits up to `lock_wait`
    seconds for another process's migration to finish.
    """
    config = alembic_config()
    try:
        async with engine.connect() as connection:
            await _lock(connection, lock_wait)
            await connection.run_sync(_upgrade, config)
            await connection.commit()
    except (SQLAlchemyError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise MigrationError(f"migration failed: {cause.__class__.__name__}: {cause}") from exc
    except CommandError as exc:
        # e.g. the database is at a revision this code does not know (a newer release).
        raise MigrationError(f"migration failed: {exc}") from exc
    return await current_revision(engine)


async def _lock(connection: AsyncConnection, lock_wait: float) -> None:
    """Open the migration's transaction holding the lock, polling: a blocking
    pg_advisory_xact_lock would run under the engine's command timeout and fail behind
    any migration longer than that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lock_wait
    delay = 0.05
    while True:
        taken = await connection.scalar(
            text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
        )
        if taken:
            return
        await connection.rollback()  # no transaction left open (and no snapshot held) between tries
        if loop.time() + delay > deadline:
            raise MigrationError(
                f"another process held the migration lock for more than {lock_wait:g} s "
                "(MIGRATION_LOCK_WAIT_SECONDS); is a migration stuck?"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_SECONDS)


def _upgrade(connection: Connection, config: Config) -> None:
    before = MigrationContext.configure(connection).get_current_revision()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    after = MigrationContext.configure(connection).get_current_revision()
    if before != after:
        log.info("database migrated from %s to %s", before or "empty", after)
