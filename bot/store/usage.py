"""Tokens spent, by user, chat, channel or model, for `bot ops usage` (read-only).

Each reply row holds its completion tokens and its model; the user message it answers
(messages.reply_to) holds the prompt tokens of that call. Grouped by what is asked and
by model, since a cost is a model's price (the caller prices them, bot/pricing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.database import Database


class UsageBy(StrEnum):
    USER = "user"
    CHAT = "chat"
    CHANNEL = "channel"
    MODEL = "model"
    VARIANT = "variant"  # of an experiment (`bot ops experiment report`)


# What each grouping is called in a row: the writer (in a shared conversation, the one
# who asked); the chat (a DM is its writer's own); the platform; the model.
_KEYS = {
    UsageBy.USER: "c.channel_type || ':' || coalesce(u.channel_user_id, '?')",
    UsageBy.CHAT: (
        "c.channel_type || ':' || CASE WHEN c.scope = 'dm' "
        "THEN 'dm:' || coalesce(u.channel_user_id, '?') ELSE c.scope END"
    ),
    UsageBy.CHANNEL: "c.channel_type",
    UsageBy.MODEL: "coalesce(r.model_used, '?')",
    UsageBy.VARIANT: "coalesce(r.metadata->>'variant', '?')",
}

_USAGE = """
SELECT {key} AS key, coalesce(r.model_used, '?') AS model,
       count(*) AS replies,
       count(DISTINCT coalesce(q.author_id, c.user_id)) AS users,
       coalesce(sum(q.token_count), 0)::bigint AS prompt_tokens,
       coalesce(sum(r.token_count), 0)::bigint AS completion_tokens
FROM messages AS r
JOIN conversations AS c ON c.id = r.conversation_id
LEFT JOIN messages AS q ON q.id = r.reply_to AND q.timestamp <= r.timestamp
LEFT JOIN users AS u ON u.id = coalesce(q.author_id, c.user_id)
WHERE r.role = 'assistant' AND r.timestamp >= :since
  AND (CAST(:experiment AS text) IS NULL OR r.metadata->>'experiment' = :experiment)
GROUP BY 1, 2
ORDER BY 1, 2
"""


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str
    model: str
    replies: int
    users: int
    prompt_tokens: int
    completion_tokens: int


class UsageQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def usage(
        self, by: UsageBy, since: datetime, experiment: str | None = None
    ) -> list[UsageRow]:
        """The replies stored since `since` (those of one `experiment`'s variants only,
        when named), grouped by `by` and model."""
        sql = text(_USAGE.format(key=_KEYS[by]))
        params = {"since": since, "experiment": experiment}

        async def work(connection: AsyncConnection) -> list[UsageRow]:
            result = await connection.execute(sql, params)
            return [UsageRow(**row._mapping) for row in result]

        return await self._database.once(work)
