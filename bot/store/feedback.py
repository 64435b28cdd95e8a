"""The SQL of feedback on replies: a user's rating of a reply (1 good, -1 bad), their
latest one winning; a removed reaction deletes it (revision 0011)."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.database import Database

GOOD, BAD = 1, -1

_RECORD = text(
    """
    INSERT INTO feedback (message_id, user_id, rating)
    VALUES (:message_id, :user_id, :rating)
    ON CONFLICT (message_id, user_id) DO UPDATE
    SET rating = EXCLUDED.rating, updated_at = now()
    """
)
_REMOVE = text(
    "DELETE FROM feedback WHERE message_id = :message_id AND user_id = :user_id RETURNING 1"
)


class FeedbackQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def record(self, message_id: uuid.UUID, user_id: uuid.UUID, rating: int) -> None:
        """The user rates the reply `message_id` (GOOD or BAD), over any earlier rating."""
        if rating not in (GOOD, BAD):
            raise ValueError(f"a rating is {GOOD} or {BAD}, not {rating}")
        params = {"message_id": message_id, "user_id": user_id, "rating": rating}

        async def work(connection: AsyncConnection) -> None:
            await connection.execute(_RECORD, params)

        await self._database.transaction(work)

    async def remove(self, message_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        """Take the user's rating of the reply back; False if there was none."""
        params = {"message_id": message_id, "user_id": user_id}

        async def work(connection: AsyncConnection) -> bool:
            return (await connection.execute(_REMOVE, params)).first() is not None

        return await self._database.transaction(work)
