"""`bot ops backup` and `bot ops restore`: Postgres, the only source of truth, to one
file and back, with the real pg_dump and pg_restore.

The tools are the embedded server's (the newest the bot ships; a newer pg_dump reads
an older server) or else those on PATH. The password goes in PGPASSWORD, never in
their command line. Their progress (`--verbose`) drives a progress bar on standard
error. A restore goes into an empty database only, and is checked: the schema
revision against this code's, and every table's row count.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from bot.embedded.postgres import pg_bin
from bot.errors import BadInput, EmbeddedServerError, NotFound, StoreFailed
from bot.ops.context import Ops
from bot.store.migrate import head_revision
from bot.urls import asyncpg_dsn, redact_url

# What pg_dump and pg_restore say as they reach each table's data (with --verbose).
_TABLE_DONE = ("dumping contents of table", "processing data for table")


def check_output(output: Path) -> None:
    if output.is_dir():
        raise BadInput(f"--output {output} is a directory; name a file")


def check_source(source: Path) -> None:
    if not source.is_file():
        raise NotFound(f"no backup file {source}")


def pg_tool(name: str) -> str:
    """The path of pg_dump or pg_restore: the embedded server's, else the one on PATH."""
    try:
        shipped = pg_bin() / name  # with the 'embedded' extra
        if shipped.exists():
            return str(shipped)
    except EmbeddedServerError:
        pass
    found = shutil.which(name)
    if found is None:
        raise NotFound(
            f"{name} not found: install PostgreSQL's client tools (Debian: postgresql-client) "
            "or the bot's 'embedded' extra"
        )
    return found


def libpq_target(database_url: str) -> tuple[str, dict[str, str]]:
    """The URL as libpq takes it, without its password, and the environment that holds
    the password instead."""
    parts = urlsplit(asyncpg_dsn(database_url))
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    env = {**os.environ, "PGPASSWORD": unquote(password)} if password else dict(os.environ)
    return urlunsplit(parts._replace(netloc=f"{user}{at}{hosts}")), env


async def run_tool(command: list[str], env: dict[str, str], advance: Callable[[int], None]) -> None:
    """Run a pg tool, advancing once per table it reaches; StoreFailed with its last
    words if it fails."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    said: list[str] = []
    async for raw in process.stderr:
        line = raw.decode(errors="replace").rstrip()
        said = [*said[-4:], line]
        if any(mark in line for mark in _TABLE_DONE):
            advance(1)
    if await process.wait() != 0:
        errors = [line for line in said if "error" in line.lower()] or said
        raise StoreFailed(f"{Path(command[0]).name} failed: {errors[-1] if errors else '?'}")


async def backup(ops: Ops, output: Path, advance: Callable[[int], None]) -> dict[str, Any]:
    """pg_dump of the whole database, in its custom format, to `output`."""
    url = ops.endpoints.database_url
    target, env = libpq_target(url)
    counts = await ops.store.monitoring.row_counts()
    revision = await ops.store.monitoring.schema_revision()
    started = time.monotonic()
    command = [pg_tool("pg_dump"), "--format=custom", "--verbose", "--file", str(output), target]
    await run_tool(command, env, advance)
    return {
        "file": str(output),
        "bytes": (await asyncio.to_thread(output.stat)).st_size,
        "database": redact_url(url),
        "revision": revision,
        "rows": counts,
        "seconds": round(time.monotonic() - started, 3),
    }


async def restore(ops: Ops, source: Path, advance: Callable[[int], None]) -> dict[str, Any]:
    """pg_restore of `source` into the (empty) database, then its check."""
    url = ops.endpoints.database_url
    present = await ops.store.monitoring.tables()
    if present:
        raise BadInput(
            f"the database of DATABASE_URL holds {len(present)} tables; a restore goes into "
            "an empty database: create one (createdb) and point DATABASE_URL at it"
        )
    target, env = libpq_target(url)
    started = time.monotonic()
    command = [pg_tool("pg_restore"), "--verbose", "--no-owner", "--exit-on-error"]
    await run_tool([*command, "--dbname", target, str(source)], env, advance)
    revision = await ops.store.monitoring.schema_revision()
    return {
        "file": str(source),
        "database": redact_url(url),
        "revision": revision,
        "head": head_revision(),
        "rows": await ops.store.monitoring.row_counts(),
        "seconds": round(time.monotonic() - started, 3),
    }
