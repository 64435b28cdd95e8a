"""The SQL of conversation summaries (bot/summaries.py): what a context is read as, and
how a summary is stored.

A summary is a `system` message whose metadata says {"summary": true, "covers": n,
...}. Its timestamp lies just after the last message it covers (and before the next
one), so it sits among the messages where it belongs, and it never becomes the
conversation's newest message: conversations.last_message_id, the turn's fence, is
left alone, and a turn racing its insert is stored (and answered) as if it were not
there. Nothing is deleted: the messages it covers stay.

A context is the latest summary and the newest messages from its timestamp on: every
reader of a context (the message flow, /history, cache warming) reads it through
`context_select`, so that Redis and Postgres give the same one.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import ContextMessage
from bot.store.database import Database

# The predicate of a summary row; the partial index ix_messages_summary (revision 0013)
# has the same one, so that the latest summary is found without reading the messages.
SUMMARY_MARK = '{"summary": true}'


def is_summary(alias: str) -> str:
    return f"{alias}.role = 'system' AND {alias}.metadata @> '{SUMMARY_MARK}'::jsonb"


def context_select(conversation: str, limit: str) -> str:
    """A SELECT of the context of `conversation` (an SQL expression): the newest `limit`
    messages after what its latest summary covers, and that summary (columns id, role,
    content, timestamp, author, covers: covers is NULL but for the summary). Unordered:
    the caller orders by timestamp DESC, role DESC, which puts the summary last."""
    return f"""
    SELECT x.* FROM (
        SELECT max(s.timestamp) AS since FROM messages s
        WHERE s.conversation_id = {conversation} AND {is_summary("s")}
    ) AS latest
    CROSS JOIN LATERAL (
        (SELECT m.id, m.role, m.content, m.timestamp,
                COALESCE(a.username, a.channel_user_id) AS author, NULL::int AS covers
         FROM messages m LEFT JOIN users a ON a.id = m.author_id
         WHERE m.conversation_id = {conversation}
           AND m.timestamp >= COALESCE(latest.since, '-infinity')
           AND NOT ({is_summary("m")})
         ORDER BY m.timestamp DESC, m.role DESC LIMIT {limit})
        UNION ALL
        (SELECT s.id, s.role, s.content, s.timestamp, NULL,
                COALESCE((s.metadata ->> 'covers')::int, 0)
         FROM messages s
         WHERE s.conversation_id = {conversation} AND s.timestamp = latest.since
           AND {is_summary("s")}
         LIMIT 1)
    ) AS x
    """


_UNCOVERED = text(
    f"""
    SELECT m.id, m.role, m.content, m.timestamp, m.author, m.covers
    FROM ({context_select(":conversation_id", ":limit")}) AS m
    ORDER BY m.timestamp DESC, m.role DESC
    """
)

# One summary at a time per conversation, whichever worker writes it: the lock is the
# transaction's (safe behind a transaction pooler), and the insert that follows it
# sees every summary committed before (a new snapshot), so it goes in only if the
# conversation is still active and its latest summary is still the one this one
# continues. Two workers racing store one summary; the other inserts nothing.
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('summary:' || :conversation_id, 0))")
_INSERT = text(
    f"""
    INSERT INTO messages (id, conversation_id, role, content, timestamp, token_count,
                          channel_type, model_used, metadata)
    SELECT :id, c.id, 'system', :content, :timestamp, :tokens, :channel, :model,
           CAST(:metadata AS jsonb)
    FROM conversations c
    WHERE c.id = :conversation_id AND c.is_active
      AND (SELECT s.id FROM messages s
           WHERE s.conversation_id = c.id AND {is_summary("s")}
           ORDER BY s.timestamp DESC LIMIT 1) IS NOT DISTINCT FROM :base
    RETURNING id
    """
)
# Whether an earlier try of this very save committed (its answer was lost).
_SAVED = text("SELECT 1 FROM messages WHERE id = :id AND timestamp = :timestamp")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message of a context as stored, with its id (a summary's `covers` set)."""

    id: uuid.UUID
    message: ContextMessage


@dataclass(frozen=True, slots=True)
class Uncovered:
    """A conversation's latest summary (None: none yet) and the messages after what it
    covers, oldest first (the newest `limit` of them)."""

    summary: StoredMessage | None
    messages: list[StoredMessage]


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """A new summary, continuing `base` (the latest summary when it was read; None)."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    base: uuid.UUID | None
    channel: str
    content: str
    timestamp: datetime  # after the last message covered, before the next one
    covers: int  # messages covered in all: the base's and the ones summarised now
    covers_until: StoredMessage  # the last message it covers
    model_used: str
    completion_tokens: int | None
    prompt_tokens: int | None

    def metadata(self) -> str:
        until = self.covers_until
        return json.dumps(
            {
                "summary": True,
                "covers": self.covers,
                "covers_until": until.message.timestamp.isoformat(),
                "covers_until_id": str(until.id),
                "continues": str(self.base) if self.base else None,
                "prompt_tokens": self.prompt_tokens,
            }
        )


def context_message(row: Any) -> ContextMessage:
    """A row of `context_select` as a context message."""
    return ContextMessage(row.role, row.content, row.timestamp, row.author, row.covers)


class SummaryQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def uncovered(self, conversation_id: uuid.UUID, limit: int) -> Uncovered:
        async def work(connection: AsyncConnection) -> Uncovered:
            params = {"conversation_id": conversation_id, "limit": limit}
            rows = (await connection.execute(_UNCOVERED, params)).all()
            found = [StoredMessage(row.id, context_message(row)) for row in rows]
            summary = found[-1] if found and found[-1].message.is_summary else None
            messages = found[:-1] if summary else found
            return Uncovered(summary, messages[::-1])

        return await self._database.transaction(work)

    async def save(self, row: SummaryRow) -> bool:
        """Store the summary; False if another was stored since its base was read (or
        the conversation was closed or deleted)."""

        async def work(connection: AsyncConnection) -> bool:
            await connection.execute(_LOCK, {"conversation_id": str(row.conversation_id)})
            params = {
                "id": row.id,
                "conversation_id": row.conversation_id,
                "content": row.content,
                "timestamp": row.timestamp,
                "tokens": row.completion_tokens,
                "channel": row.channel,
                "model": row.model_used,
                "metadata": row.metadata(),
                "base": row.base,
            }
            if (await connection.execute(_INSERT, params)).first() is not None:
                return True
            ours = {"id": row.id, "timestamp": row.timestamp}
            return (await connection.execute(_SAVED, ours)).first() is not None

        return await self._database.transaction(work)
