"""The engine's pool: connections are pinged only after sitting idle, and a dead idle
connection is replaced on checkout without the caller seeing an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.bench.probes import PING, PgProbe
from bot.config import Settings
from bot.store.engine import create_engine
from bot.urls import asyncpg_dsn
from tests.support import free_port

IDLE = 0.3  # seconds before a pooled connection is pinged, in these tests

EngineFactory = Callable[..., tuple[AsyncEngine, PgProbe]]


@pytest.fixture
async def make_engine(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[EngineFactory]:
    engines: list[AsyncEngine] = []

    def make(**overrides: Any) -> tuple[AsyncEngine, PgProbe]:
        settings = make_settings(**overrides)
        assert settings.database_url is not None
        engine = create_engine(settings, settings.database_url.get_secret_value(), pool_size=1)
        probe = PgProbe()
        probe.attach(engine)
        engines.append(engine)
        return engine, probe

    yield make
    for engine in engines:
        await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    assert isinstance(pid, int)
    return pid


async def terminate(engine: AsyncEngine, pid: int) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


async def test_a_busy_connection_is_not_pinged_an_idle_one_is(
    make_engine: EngineFactory,
) -> None:
    engine, probe = make_engine(db_pool_ping_idle_seconds=IDLE)
    first = await backend_pid(engine)
    for _ in range(5):
        assert await backend_pid(engine) == first
    assert probe.counts[PING] == 0  # checked in moments ago each time

    await asyncio.sleep(IDLE + 0.1)
    assert await backend_pid(engine) == first
    assert probe.counts[PING] == 1


async def test_a_dead_idle_connection_is_replaced_on_checkout(
    make_engine: EngineFactory, engine: AsyncEngine
) -> None:
    pinged, _ = make_engine(db_pool_ping_idle_seconds=IDLE)
    old = await backend_pid(pinged)
    await terminate(engine, old)
    await asyncio.sleep(IDLE + 0.1)

    assert await backend_pid(pinged) != old  # no error reached the caller


async def test_without_pre_ping_a_dead_connection_fails_its_next_use(
    make_engine: EngineFactory, engine: AsyncEngine
) -> None:
    unpinged, probe = make_engine(db_pool_pre_ping=False)
    old = await backend_pid(unpinged)
    await terminate(engine, old)
    await asyncio.sleep(IDLE + 0.1)

    with pytest.raises(DBAPIError):
        await backend_pid(unpinged)
    assert await backend_pid(unpinged) != old  # the pool dropped it
    assert probe.counts[PING] == 0


async def test_zero_idle_seconds_pings_on_every_checkout(make_engine: EngineFactory) -> None:
    engine, probe = make_engine(db_pool_ping_idle_seconds=0)
    for _ in range(3):
        await backend_pid(engine)
    assert probe.counts[PING] == 2  # all but the fresh connection's first checkout


async def test_of_several_hosts_the_writable_one_that_answers_is_used(
    make_engine: EngineFactory, database_url: str
) -> None:
    """libpq's failover form: the first host is down, the second is the primary."""
    live = make_url(database_url)
    dead = free_port()
    several = (
        f"postgresql://{live.username}@127.0.0.1:{dead},{live.host}:{live.port}/"
        f"{live.database}?target_session_attrs=read-write"
    )
    engine, _ = make_engine(database_url=several)

    async with engine.connect() as connection:
        port = (await connection.execute(text("SELECT inet_server_port()"))).scalar_one()
    direct = await asyncpg.connect(asyncpg_dsn(several))
    try:
        writable = await direct.fetchval("SELECT NOT pg_is_in_recovery()")
    finally:
        await direct.close()

    assert port == live.port and writable
