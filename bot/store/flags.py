"""The SQL of feature flags: read them, and change one while Redis is rewritten in the
same transaction (bot/flags.py coordinates both)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import FlagRow
from bot.store import mirrored
from bot.store.database import Database

FlagsWritten = Callable[[list[FlagRow]], Awaitable[None]]

# Any fixed 64-bit number: "the feature flags" among advisory locks. Writers of flags
# and refills of their Redis cache take it, so the cache is written in commit order.
FLAGS_LOCK_ID = 0x6368_6174_626F_7402

_ALL_FLAGS = text("SELECT scope, name, value, updated_at FROM feature_flags ORDER BY scope, name")
_UPSERT_FLAG = text(
    """
    INSERT INTO feature_flags (scope, name, value) VALUES (:scope, :name, CAST(:value AS jsonb))
    ON CONFLICT (scope, name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
    """
)
_DELETE_FLAG = text("DELETE FROM feature_flags WHERE scope = :scope AND name = :name RETURNING id")


class FlagQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def rows(self) -> list[FlagRow]:
        return await self._database.transaction(_all_flags)

    async def refill(self, write: FlagsWritten) -> list[FlagRow]:
        """Every flag, handed to `write` (the Redis refill) under the flags lock."""
        return await mirrored.refill(self._database, FLAGS_LOCK_ID, _all_flags, write)

    async def change(
        self, scope: str, name: str, value: Any, write: FlagsWritten, *, unset: bool = False
    ) -> tuple[bool, list[FlagRow]]:
        """Set (or unset) one flag, then hand every flag to `write` before the commit.

        Returns whether the flag existed before, and all flags after the change.
        """

        async def mutate(connection: AsyncConnection) -> bool:
            params = {"scope": scope, "name": name}
            before = await _all_flags(connection)
            if unset:
                await connection.execute(_DELETE_FLAG, params)
            else:
                await connection.execute(_UPSERT_FLAG, {**params, "value": json.dumps(value)})
            return any(row.scope == scope and row.name == name for row in before)

        return await mirrored.change(self._database, FLAGS_LOCK_ID, mutate, _all_flags, write)


async def _all_flags(connection: AsyncConnection) -> list[FlagRow]:
    rows = await connection.execute(_ALL_FLAGS)
    return [FlagRow(row.scope, row.name, row.value, row.updated_at) for row in rows]
