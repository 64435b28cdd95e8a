"""The SQL of housekeeping: retention (`bot ops purge`), cache warming and flushing
(`bot ops cache …`). Each public method is one transaction, retried as a unit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import ActiveSession, ContextMessage, RecentContext, SessionState
from bot.store.database import Database
from bot.store.summaries import context_message, context_select

_USER_CONVERSATIONS = text(
    """
    SELECT u.id AS user_id,
           COALESCE(array_agg(c.id) FILTER (WHERE c.id IS NOT NULL), '{}') AS conversation_ids,
           COALESCE(array_agg(DISTINCT c.scope) FILTER (WHERE c.id IS NOT NULL), '{}') AS scopes
    FROM users u LEFT JOIN conversations c ON c.user_id = u.id
    WHERE u.channel_type = :channel AND u.channel_user_id = :channel_user_id
    GROUP BY u.id
    """
)

# Retention: bounded batches, each its own short transaction; SKIP LOCKED never waits.
# The deletes and the count of what they still match share their predicates, so the
# purge knows when rows were passed over (locked) rather than gone.
_OLD_MESSAGE = "timestamp < :cutoff"
_EMPTY_CONVERSATION = """
    NOT c.is_active AND c.last_activity < :cutoff
    AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id)
"""
# By the whole key (id, timestamp): each row is found in its own partition. Their
# claims (message_events, message_replies) go with them, by the foreign key's cascade.
_PURGE_MESSAGES = text(
    f"""
    DELETE FROM messages WHERE (id, timestamp) IN (
        SELECT id, timestamp FROM messages WHERE {_OLD_MESSAGE}
        ORDER BY timestamp LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING conversation_id
    """
)
# Which post shows which reply (reply_posts), and the ratings of replies (feedback), as
# old as the messages retention deletes: neither names a message by a foreign key
# (messages is partitioned), so each goes by its own time.
_PURGE_RATINGS = text(
    """
    WITH posts AS (
        DELETE FROM reply_posts WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM reply_posts WHERE created_at < :cutoff LIMIT :limit))
        RETURNING 1
    ), ratings AS (
        DELETE FROM feedback WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM feedback WHERE updated_at < :cutoff LIMIT :limit))
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM posts) + (SELECT count(*) FROM ratings)
    """
)
_PURGE_CONVERSATIONS = text(
    f"""
    DELETE FROM conversations WHERE id IN (
        SELECT c.id FROM conversations c WHERE {_EMPTY_CONVERSATION}
        LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING id
    """
)
_COUNT_PURGE_MATCHES = text(
    f"""
    SELECT (SELECT count(*) FROM messages WHERE {_OLD_MESSAGE}) AS messages,
           (SELECT count(*) FROM conversations c WHERE {_EMPTY_CONVERSATION}) AS conversations
    """
)
# Inactive, idle since before the cutoff, and with no message the cutoff keeps: what
# the purge will have deleted once the old messages are gone (for the counts up front).
_EMPTY_INACTIVE = """
    NOT c.is_active AND c.last_activity < :cutoff
    AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                    AND m.timestamp >= :cutoff)
"""
_COUNT_PURGEABLE = text(
    f"""
    SELECT (SELECT count(*) FROM messages WHERE {_OLD_MESSAGE}) AS messages,
           (SELECT count(*) FROM conversations c WHERE {_EMPTY_INACTIVE}) AS conversations
    """
)
_PURGEABLE_CONVERSATIONS = text(
    f"""
    SELECT c.id FROM conversations c
    WHERE c.id > :after AND (
        EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                AND m.timestamp < :cutoff)
        OR ({_EMPTY_INACTIVE}))
    ORDER BY c.id LIMIT :limit
    """
)

# Warming: the active conversations of users seen since a time, with their context.
_COUNT_ACTIVE_SINCE = text(
    "SELECT count(*) FROM conversations WHERE is_active AND last_activity >= :since"
)
_ACTIVE_SINCE = text(
    """
    SELECT c.id AS conversation_id, c.user_id, u.channel_type, u.channel_user_id, c.scope,
           COALESCE(c.model_override, u.preferred_model) AS model,
           c.model_override IS NOT NULL AS pinned, c.last_activity,
           c.last_message_id
    FROM conversations c JOIN users u ON u.id = c.user_id
    WHERE c.is_active AND c.last_activity >= :since AND c.id > :after
    ORDER BY c.id LIMIT :limit
    """
)
_CONTEXTS = text(
    f"""
    SELECT c.id AS conversation_id, m.role, m.content, m.timestamp, m.author, m.covers
    FROM unnest(CAST(:ids AS uuid[])) AS c(id)
    CROSS JOIN LATERAL ({context_select("c.id", ":limit")}) m
    ORDER BY c.id, m.timestamp DESC, m.role DESC
    """
)
_NIL = uuid.UUID(int=0)


@dataclass(frozen=True, slots=True)
class UserRefs:
    """What names a user's keys in Redis: their id, conversations and scopes."""

    user_id: uuid.UUID
    conversations: tuple[uuid.UUID, ...]
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    messages: int
    conversations: int


class HousekeepingQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def user_conversations(self, channel: str, channel_user_id: str) -> UserRefs | None:
        """A user's id, the ids of all their conversations and the scopes they are in;
        None if no such user."""
        params = {"channel": channel, "channel_user_id": channel_user_id}

        async def work(connection: AsyncConnection) -> UserRefs | None:
            row = (await connection.execute(_USER_CONVERSATIONS, params)).first()
            if row is None:
                return None
            return UserRefs(row.user_id, tuple(row.conversation_ids), tuple(row.scopes))

        return await self._database.transaction(work)

    async def count_active_since(self, since: datetime) -> int:
        async def work(connection: AsyncConnection) -> int:
            found = await connection.execute(_COUNT_ACTIVE_SINCE, {"since": since})
            return int(found.scalar_one())

        return await self._database.transaction(work)

    async def active_sessions(
        self, since: datetime, after: uuid.UUID | None, limit: int, context_limit: int
    ) -> list[ActiveSession]:
        """One page (by conversation id, after `after`) of active conversations seen since."""

        async def work(connection: AsyncConnection) -> list[ActiveSession]:
            params = {"since": since, "after": after or _NIL, "limit": limit}
            rows = list(await connection.execute(_ACTIVE_SINCE, params))
            ids = [row.conversation_id for row in rows]
            context: dict[uuid.UUID, list[ContextMessage]] = {i: [] for i in ids}
            found = await connection.execute(_CONTEXTS, {"ids": ids, "limit": context_limit})
            for m in found:
                context[m.conversation_id].append(context_message(m))
            # The fence was read before the context: should a message be stored in
            # between, the context is newer than its fence, which costs the next message
            # a read from Postgres, never its order.
            return [
                ActiveSession(
                    row.channel_type,
                    row.channel_user_id,
                    row.scope,
                    SessionState(row.user_id, row.conversation_id, row.model, row.pinned),
                    row.last_activity,
                    RecentContext(context[row.conversation_id], row.last_message_id),
                )
                for row in rows
            ]

        return await self._database.transaction(work)

    # --- retention --------------------------------------------------------------------

    async def count_purgeable(self, cutoff: datetime) -> PurgeCounts:
        """What a whole purge would delete (conversations: once their old messages are gone)."""
        return await self._counts(_COUNT_PURGEABLE, cutoff)

    async def count_purge_matches(self, cutoff: datetime) -> PurgeCounts:
        """What the purge deletes match right now, locked rows included."""
        return await self._counts(_COUNT_PURGE_MATCHES, cutoff)

    async def _counts(self, statement: TextClause, cutoff: datetime) -> PurgeCounts:
        async def work(connection: AsyncConnection) -> PurgeCounts:
            row = (await connection.execute(statement, {"cutoff": cutoff})).one()
            return PurgeCounts(int(row.messages), int(row.conversations))

        return await self._database.transaction(work)

    async def purgeable_conversations(
        self, cutoff: datetime, after: uuid.UUID | None, limit: int
    ) -> list[uuid.UUID]:
        """One page of the conversations a purge would touch (lose messages or be deleted)."""
        params = {"cutoff": cutoff, "after": after or _NIL, "limit": limit}
        return await self._ids(_PURGEABLE_CONVERSATIONS, params)

    async def purge_messages(self, cutoff: datetime, limit: int) -> list[uuid.UUID]:
        """Delete up to `limit` messages older than `cutoff`; their conversations' ids."""
        return await self._ids(_PURGE_MESSAGES, {"cutoff": cutoff, "limit": limit})

    async def purge_ratings(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` reply posts and `limit` ratings older than `cutoff`; how
        many rows went."""

        async def work(connection: AsyncConnection) -> int:
            params = {"cutoff": cutoff, "limit": limit}
            return int(await connection.scalar(_PURGE_RATINGS, params) or 0)

        return await self._database.transaction(work)

    async def purge_conversations(self, cutoff: datetime, limit: int) -> list[uuid.UUID]:
        """Delete up to `limit` inactive conversations left empty before `cutoff`."""
        return await self._ids(_PURGE_CONVERSATIONS, {"cutoff": cutoff, "limit": limit})

    async def _ids(self, statement: TextClause, params: dict[str, Any]) -> list[uuid.UUID]:
        """One transaction of one statement returning ids."""

        async def work(connection: AsyncConnection) -> list[uuid.UUID]:
            return list((await connection.execute(statement, params)).scalars())

        return await self._database.transaction(work)
