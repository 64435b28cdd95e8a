"""The bot behind a real PgBouncer in transaction mode (DATABASE_POOLER=transaction):
consecutive transactions of one client run on whichever server connection is free, so
nothing may outlive its transaction there: no named prepared statement, no session
setting, no session-level lock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bot.config import Settings
from bot.embedded.pgbouncer import local_pgbouncer, pgbouncer_binary
from bot.store.engine import create_engine
from bot.store.migrate import head_revision, upgrade_to_head
from tests.store.conftest import NewDatabase
from tests.support import (
    ServiceFactory,
    admin_fetch,
    engine_on,
    handled,
    messages_of,
    msg,
    new_user,
    required_binary,
    run_together,
)

SERVER_CONNECTIONS = 2  # fewer than the clients: they take turns on the same ones
POOLED = {"database_pooler": "transaction"}


@pytest.fixture(scope="module")
def bouncer_url(database_url: str) -> Iterator[str]:
    """The run's database through a PgBouncer of this module's own."""
    required_binary(pgbouncer_binary(), "pgbouncer")
    with local_pgbouncer(database_url, pool_size=SERVER_CONNECTIONS) as url:
        yield url


async def test_services_behind_pgbouncer_answer_many_users_at_once(
    make_service: ServiceFactory, bouncer_url: str, database_url: str
) -> None:
    services = [await make_service(database_url=bouncer_url, **POOLED) for _ in range(3)]
    users = [new_user() for _ in range(12)]

    async def talk(index: int, user: str) -> list[str]:
        service = services[index % len(services)]
        return [
            (await handled(service, msg(user, f"m{n}", pid=f"{user}-{n}"))).kind for n in range(4)
        ]

    kinds = await asyncio.gather(*(talk(i, u) for i, u in enumerate(users)))

    assert kinds == [["answer"] * 4] * len(users)
    async with engine_on(database_url) as direct:
        for user in users:
            rows = await messages_of(direct, user)
            assert [(r.role, r.content[:2]) for r in rows[::2]] == [
                ("user", f"m{n}") for n in range(4)
            ]
            assert [r.role for r in rows[1::2]] == ["assistant"] * 4


async def test_the_statement_timeout_is_set_in_each_transaction_and_ends_with_it(
    make_settings: Callable[..., Settings], bouncer_url: str
) -> None:
    settings = make_settings(db_statement_timeout_ms=300, **POOLED)
    engine = create_engine(settings, bouncer_url)
    try:
        async with engine.begin() as connection:
            assert await connection.scalar(text("SHOW statement_timeout")) == "300ms"
        with pytest.raises(DBAPIError, match="statement timeout"):
            async with engine.begin() as connection:
                await connection.execute(text("SELECT pg_sleep(3)"))
    finally:
        await engine.dispose()
    # The server connections it used, now another client's, kept the server's default.
    for _ in range(SERVER_CONNECTIONS):
        other = await asyncpg.connect(bouncer_url, statement_cache_size=0)
        try:
            assert await other.fetchval("SHOW statement_timeout") != "300ms"
        finally:
            await other.close()


async def test_migrations_through_pgbouncer_leave_no_lock_behind(
    make_settings: Callable[..., Settings], new_database: NewDatabase, server_urls: tuple[str, str]
) -> None:
    url = await new_database()
    settings = make_settings(**POOLED)
    with local_pgbouncer(url, pool_size=SERVER_CONNECTIONS) as through:
        engines = [create_engine(settings, through) for _ in range(3)]
        try:
            revisions = await asyncio.gather(*(upgrade_to_head(e) for e in engines))
        finally:
            for engine in engines:
                await engine.dispose()

    assert revisions == [head_revision()] * 3
    name = url.rsplit("/", 1)[1]
    held = "SELECT l.* FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
    locks = await admin_fetch(server_urls[0], f"{held} WHERE d.datname = '{name}'")
    assert locks == []  # a session lock taken through the pooler would still be held


def test_worker_processes_behind_pgbouncer_store_each_message_once(
    make_settings: Callable[..., Settings], bouncer_url: str, database_url: str
) -> None:
    settings = make_settings(database_url=bouncer_url, **POOLED)
    user = new_user()
    texts = [[f"{user} p{p} m{m}" for m in range(3)] for p in range(3)]  # event ids too

    results: list[Any] = run_together(
        settings, [["tests.concurrent_client", user, *own] for own in texts], 120.0
    )

    assert [kind for result in results for kind, _ in result] == ["answer"] * 9
    rows = asyncio.run(_stored(database_url, user))
    assert sorted(rows) == sorted(t for own in texts for t in own)


async def _stored(url: str, user: str) -> list[str]:
    async with engine_on(url) as engine:
        return [r.content for r in await messages_of(engine, user) if r.role == "user"]
