"""The engine and the retry policy that every query of the store runs under.

Four ways in, each mapping Postgres errors to ours (bot/errors.py) where they enter:
`transaction` (a unit of work, retried as a whole), `prepared` (the warm path's one
statement in a transaction of its own, sent by asyncpg itself), `statement` (one
statement with no BEGIN at all: a cold start's one round trip) and `once` (an
operator's read or erase: one attempt, a failure reported at once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.store.retry import DatabaseRetry, errors_mapped

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[T]]


class Database:
    def __init__(self, engine: AsyncEngine, retry: DatabaseRetry) -> None:
        self.engine = engine
        self.retry = retry

    async def transaction(self, work: Work[T]) -> T:
        """`work` in one transaction, committed at its end; retried as a unit."""

        async def attempt() -> T:
            async with self.engine.begin() as connection:
                return await work(connection)

        return await self.retry.run(attempt)

    async def prepared(self, sql: str, *args: Any) -> asyncpg.Record:
        """One statement in a transaction of its own, sent by asyncpg directly.

        The warm path's only Postgres work skips SQLAlchemy's per-statement machinery
        (a third of the client's CPU per message) and uses asyncpg's statement cache,
        so it is prepared once per connection. The connection still comes from, and
        goes back to, SQLAlchemy's pool; after any failure it is discarded instead,
        which also makes the server roll the transaction back.
        """

        async def attempt() -> asyncpg.Record:
            async with self.engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver: asyncpg.Connection = raw.driver_connection
                try:
                    await driver.execute("BEGIN")
                    row = await driver.fetchrow(sql, *args)
                    await driver.execute("COMMIT")
                except BaseException:
                    # No ROLLBACK round trip: it would wait on a hung server all over again.
                    await connection.invalidate()
                    raise
                return row

        return await self.retry.run(attempt)

    async def statement(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """One statement on its own, sent by asyncpg directly (prepared once per
        connection): Postgres runs it atomically without a BEGIN, in one round trip. For
        reads, and for writes a retry may repeat (it finds what an earlier try did)."""
        return await self._on_driver(lambda driver: driver.fetchrow(sql, *args))

    async def statement_rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """`statement`, for one that returns several rows."""
        return list(await self._on_driver(lambda driver: driver.fetch(sql, *args)))

    async def _on_driver(self, use: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`use` on a pooled connection's asyncpg driver, under the retry policy; a
        connection that failed is discarded, not pooled again."""

        async def attempt() -> T:
            async with self.engine.connect() as connection:
                raw = await connection.get_raw_connection()
                try:
                    return await use(raw.driver_connection)
                except BaseException:
                    await connection.invalidate()
                    raise

        return await self.retry.run(attempt)

    async def once(self, work: Work[T]) -> T:
        """`work` on a connection of the pool, tried once (it begins and commits what it
        writes itself): for an operator's command, which reports a failure at once."""
        with errors_mapped():
            async with self.engine.connect() as connection:
                return await work(connection)
