"""Tokens spent: by user, chat, channel or model, for `bot ops usage` (read-only); and
by one writer and chat this day and month, the truth quota counters are rebuilt from
(bot/quotas.py).

Each reply row holds its completion tokens and its model; the user message it answers
(messages.reply_to) holds the prompt tokens of that call. A summary (bot/summaries.py)
is a call too: its row holds its completion tokens, its metadata the prompt's. Grouped
by what is asked and by model, since a cost is a model's price (the caller prices
them, bot/pricing.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import ChatKind, Scope
from bot.quotas import Counter, Holder, Period, Spent
from bot.store.database import Database
from bot.store.summaries import is_summary


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
       count(*) FILTER (WHERE r.role = 'assistant') AS replies,
       count(DISTINCT coalesce(q.author_id, c.user_id)) AS users,
       coalesce(sum(coalesce(q.token_count, (r.metadata->>'prompt_tokens')::bigint)), 0)::bigint
           AS prompt_tokens,
       coalesce(sum(r.token_count), 0)::bigint AS completion_tokens
FROM messages AS r
JOIN conversations AS c ON c.id = r.conversation_id
LEFT JOIN messages AS q ON q.id = r.reply_to AND q.timestamp <= r.timestamp
LEFT JOIN users AS u ON u.id = coalesce(q.author_id, c.user_id)
WHERE (r.role = 'assistant' OR {summary}) AND r.timestamp >= :since
  AND (CAST(:experiment AS text) IS NULL OR r.metadata->>'experiment' = :experiment)
GROUP BY 1, 2
ORDER BY 1, 2
"""


# The tokens of each exchange (the user message's and its reply's) since the month began
# ($5), of the writer ($2: users.id) and in the group chat ($1, $3: its scope; NULL in a
# DM), each found by index: the writer's own conversations (conversations.user_id), the
# shared ones they asked in (messages.author_id), and the chat's and its threads'
# (ix_conversations_chat, the expression of revision 0014: a thread's scope is its
# chat's followed by ':thread:', bot/domain.py). A message of the writer's in the chat
# is in both the writer's rows and the chat's; each sum reads its own.
_SPENT = """
WITH asked AS (
    SELECT q.timestamp AS ts, q.token_count AS prompt, q.id, true AS mine
    FROM conversations AS c
    JOIN messages AS q ON q.conversation_id = c.id
    WHERE c.user_id = $2 AND q.role = 'user' AND q.timestamp >= $5
  UNION ALL
    SELECT q.timestamp, q.token_count, q.id, true
    FROM messages AS q
    WHERE q.author_id = $2 AND q.timestamp >= $5
  UNION ALL
    SELECT q.timestamp, q.token_count, q.id, false
    FROM conversations AS c
    JOIN messages AS q ON q.conversation_id = c.id
    WHERE c.channel_type = $1 AND split_part(c.scope, ':thread:', 1) = $3
      AND q.role = 'user' AND q.timestamp >= $5
), spent AS (
    SELECT a.ts, a.mine, coalesce(a.prompt, 0) + coalesce(r.token_count, 0) AS tokens
    FROM asked AS a
    LEFT JOIN message_replies AS mr ON mr.reply_to = a.id
    LEFT JOIN messages AS r ON r.id = mr.reply_id AND r.timestamp = mr.reply_timestamp
)
SELECT coalesce(sum(tokens) FILTER (WHERE mine AND ts >= $4), 0)::bigint AS user_day,
       coalesce(sum(tokens) FILTER (WHERE mine), 0)::bigint AS user_month,
       coalesce(sum(tokens) FILTER (WHERE NOT mine AND ts >= $4), 0)::bigint AS chat_day,
       coalesce(sum(tokens) FILTER (WHERE NOT mine), 0)::bigint AS chat_month
FROM spent
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
        sql = text(_USAGE.format(key=_KEYS[by], summary=is_summary("r")))
        params = {"since": since, "experiment": experiment}

        async def work(connection: AsyncConnection) -> list[UsageRow]:
            result = await connection.execute(sql, params)
            return [UsageRow(**row._mapping) for row in result]

        return await self._database.once(work)

    async def spent(
        self, channel: str, user_id: uuid.UUID, chat_id: str | None, now: datetime
    ) -> Spent:
        """The tokens the writer (`user_id`), and the group chat they write in (none in
        a DM), spent this UTC day and month: what Redis's quota counters hold, rebuilt."""
        chat = Scope(ChatKind.GROUP, chat_id).key if chat_id is not None else None
        day, month = Period.DAY.start(now), Period.MONTH.start(now)
        row = await self._database.statement(_SPENT, channel, user_id, chat, day, month)
        assert row is not None  # an aggregate without GROUP BY has one row
        tokens = {
            Counter(holder, period): int(row[f"{holder}_{period}"])
            for holder in Holder
            for period in Period
            if holder is Holder.USER or chat is not None
        }
        return Spent(tokens)
