"""The SQL of the blocklist: read it, and block or unblock one user while Redis is
rewritten in the same transaction (bot/blocklist.py coordinates both)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import BlockedRow
from bot.store import mirrored
from bot.store.database import Database

BlocklistWritten = Callable[[list[BlockedRow]], Awaitable[None]]

# Any fixed 64-bit number: "the blocklist" among advisory locks. Changes and refills of
# its Redis copy take it, so the copy is written in commit order.
BLOCKLIST_LOCK_ID = 0x6368_6174_626F_7403

_ALL = text(
    "SELECT channel_type, channel_user_id, reason, blocked_at FROM blocked_users "
    "ORDER BY channel_type, channel_user_id"
)
# A second block keeps the first time and takes the newer reason, if one is given.
_BLOCK = text(
    """
    INSERT INTO blocked_users (channel_type, channel_user_id, reason)
    VALUES (:channel, :user, :reason)
    ON CONFLICT (channel_type, channel_user_id)
    DO UPDATE SET reason = COALESCE(EXCLUDED.reason, blocked_users.reason)
    RETURNING (xmax <> 0) AS existed
    """
)
_UNBLOCK = text(
    "DELETE FROM blocked_users WHERE channel_type = :channel AND channel_user_id = :user "
    "RETURNING 1"
)


class BlocklistQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def rows(self) -> list[BlockedRow]:
        return await self._database.transaction(_all)

    async def refill(self, write: BlocklistWritten) -> list[BlockedRow]:
        """Every blocked user, handed to `write` (the Redis refill) under the lock."""
        return await mirrored.refill(self._database, BLOCKLIST_LOCK_ID, _all, write)

    async def change(
        self,
        channel: str,
        user: str,
        write: BlocklistWritten,
        *,
        reason: str | None = None,
        unblock: bool = False,
    ) -> tuple[bool, list[BlockedRow]]:
        """Block (or unblock) one user, then hand every row to `write` before the
        commit. Returns whether the user was blocked before, and all rows after."""

        async def mutate(connection: AsyncConnection) -> bool:
            params = {"channel": channel, "user": user}
            if unblock:
                return (await connection.execute(_UNBLOCK, params)).first() is not None
            found = await connection.execute(_BLOCK, {**params, "reason": reason})
            return bool(found.scalar_one())

        return await mirrored.change(self._database, BLOCKLIST_LOCK_ID, mutate, _all, write)


async def _all(connection: AsyncConnection) -> list[BlockedRow]:
    found = await connection.execute(_ALL)
    return [
        BlockedRow(row.channel_type, row.channel_user_id, row.reason, row.blocked_at)
        for row in found
    ]
