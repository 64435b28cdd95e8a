"""What the store tests share: databases of their own on demand, the real `alembic`
command line, and the store's queries on the run-wide database (whose sessions a test
can watch wait for a lock)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.store.conversations import ConversationQueries
from bot.store.database import Database
from bot.store.engine import create_engine
from bot.store.retry import DatabaseRetry
from tests.conftest import create_database, drop_database
from tests.support import fetch

ROOT = Path(__file__).resolve().parents[2]
PROXIES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}

NewDatabase = Callable[[], Awaitable[str]]


@pytest.fixture
async def new_database(server_urls: tuple[str, str]) -> AsyncIterator[NewDatabase]:
    """Creates empty databases on demand (plain postgresql:// URLs); drops them after."""
    admin_url = server_urls[0]
    names: list[str] = []

    async def create() -> str:
        names.append(f"bot_mig_{uuid.uuid4().hex[:12]}")
        return await create_database(admin_url, names[-1])

    yield create
    for name in names:
        await drop_database(admin_url, name)


async def alembic(url: str | None, *args: str) -> tuple[int, str]:
    """The real `alembic` command line of this interpreter, from the repository root;
    (exit code, all output). `url` None leaves DATABASE_URL unset."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in PROXIES and k.lower() not in Settings.model_fields
    }
    if url is not None:
        env["DATABASE_URL"] = url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def query(url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def execute(url: str, sql: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


APPLICATION = f"test-store-{uuid.uuid4().hex[:8]}"  # to watch the store's sessions wait


@pytest.fixture
async def store(make_settings: Callable[..., Settings]) -> AsyncIterator[ConversationQueries]:
    settings = make_settings(db_application_name=APPLICATION)
    assert settings.database_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value())
    yield ConversationQueries(Database(engine, DatabaseRetry(3, 10)))
    await engine.dispose()


async def store_waits_for_a_lock(engine: AsyncEngine) -> None:
    async with asyncio.timeout(10):
        while True:
            waiting = await fetch(
                engine,
                "SELECT 1 FROM pg_stat_activity "
                "WHERE application_name = :a AND wait_event_type = 'Lock'",
                a=APPLICATION,
            )
            if waiting:
                return
            await asyncio.sleep(0.02)
