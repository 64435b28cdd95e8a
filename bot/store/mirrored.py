"""The SQL pattern of a small table each worker holds in memory (feature flags, the
blocklist; bot/mirror.py): every read that refills the Redis copy, and every change,
runs under the table's advisory lock, with the Redis write inside the transaction, so
Redis is written in commit order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.database import Database

Row = TypeVar("Row")
Read = Callable[[AsyncConnection], Awaitable[list[Row]]]
Written = Callable[[list[Row]], Awaitable[None]]
Mutate = Callable[[AsyncConnection], Awaitable[bool]]  # whether the row existed before

_LOCK = text("SELECT pg_advisory_xact_lock(:id)")


async def refill(database: Database, lock: int, read: Read[Row], write: Written[Row]) -> list[Row]:
    """Every row, handed to `write` (the Redis refill) under the table's lock."""

    async def work(connection: AsyncConnection) -> list[Row]:
        await connection.execute(_LOCK, {"id": lock})
        rows = await read(connection)
        await write(rows)
        return rows

    return await database.transaction(work)


async def change(
    database: Database, lock: int, mutate: Mutate, read: Read[Row], write: Written[Row]
) -> tuple[bool, list[Row]]:
    """`mutate` under the table's lock, then every row handed to `write` before the
    commit. Returns whether the row existed before, and all rows after."""

    async def work(connection: AsyncConnection) -> tuple[bool, list[Row]]:
        await connection.execute(_LOCK, {"id": lock})
        existed = await mutate(connection)
        rows = await read(connection)
        await write(rows)
        return existed, rows

    return await database.transaction(work)
