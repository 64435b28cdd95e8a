"""The SQL of `bot ops user …` and `bot ops conversation …`: read a user or a
conversation, export a user, erase a user, search messages.

Nothing here is retried (Database.once): an operator's one-shot command reports a
failure at once, as a StoreError whose cause names the driver's error.

Search is Postgres full-text search over messages.content, served by the GIN index
ix_messages_content_fts of revision 0003; the WHERE clause repeats the indexed
expression, to_tsvector('simple', content), so that the planner can use it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.database import Database
from bot.store.records import (
    ChatConversation,
    ConversationHistory,
    ConversationRow,
    ConversationSummary,
    ExportedConversation,
    MessageRow,
    RecentMessage,
    SearchHit,
    StoredEvent,
    UserConversations,
    UserExport,
    UserRow,
)
from bot.store.summaries import is_summary

Progress = Callable[[int], None]  # called with how many items were just done

_USER = text(
    """SELECT id, channel_type, channel_user_id, username, preferred_model, created_at,
              updated_at, metadata
       FROM users WHERE channel_type = :channel AND channel_user_id = :channel_user_id"""
)
# The user's own conversations, and the shared ones they wrote in (found by the index on
# messages.author_id); of a shared one, only what they wrote counts as theirs.
_CONVERSATIONS = text(
    """SELECT c.id, c.scope, c.user_id IS NULL AS shared, c.is_active, c.model_override,
              c.started_at, c.last_activity, c.metadata,
              count(m.id) AS messages, coalesce(sum(m.token_count), 0) AS tokens
       FROM conversations c
       LEFT JOIN messages m ON m.conversation_id = c.id
                           AND (c.user_id IS NOT NULL OR m.author_id = :user_id)
       WHERE c.user_id = :user_id
          OR c.id IN (SELECT conversation_id FROM messages WHERE author_id = :user_id)
       GROUP BY c.id ORDER BY c.started_at DESC"""
)
_ALL_MESSAGES = text(
    """SELECT id, role, content, model_used, token_count, timestamp, platform_message_id,
              metadata
       FROM messages
       WHERE conversation_id = :conversation_id AND (NOT :shared OR author_id = :user_id)
       ORDER BY timestamp, role DESC"""
)
_LOCK_USER = text("SELECT id FROM users WHERE id = :id FOR UPDATE")
_DELETE_USER = text("DELETE FROM users WHERE id = :id")
# What they wrote that is not answered yet: a sweep would answer it, and make them again.
_DELETE_USER_INBOX = text(
    """DELETE FROM inbox WHERE channel_type = :channel
       AND message->>'channel_user_id' = :channel_user_id"""
)

_CONVERSATION = text(
    """SELECT c.id, c.channel_type, c.scope, c.is_active, c.model_override, c.started_at,
              c.last_activity, c.user_id, u.channel_user_id, u.username,
              (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages
       FROM conversations c LEFT JOIN users u ON u.id = c.user_id WHERE c.id = :id"""
)
_RECENT = text(
    f"""SELECT * FROM (
           SELECT id, role, model_used, token_count, timestamp, content,
                  CASE WHEN {is_summary("messages")}
                       THEN COALESCE((metadata ->> 'covers')::int, 0) END AS summary_of
           FROM messages
           WHERE conversation_id = :id ORDER BY timestamp DESC, role LIMIT :limit
       ) recent ORDER BY timestamp, role DESC"""
)
# The matches first (the index finds them, newest first), then a snippet for each of
# the few kept: ts_headline reads the whole text, so it runs after the LIMIT.
_SEARCH = text(
    """WITH query AS (SELECT websearch_to_tsquery('simple', :text) AS q),
       hits AS (
           SELECT m.id, m.conversation_id, m.role, m.timestamp, m.content, m.author_id
           FROM messages m, query
           WHERE to_tsvector('simple', m.content) @@ query.q
           ORDER BY m.timestamp DESC LIMIT :limit
       )
       SELECT hits.conversation_id, hits.id AS message_id, c.channel_type AS channel,
              u.channel_user_id, u.username, hits.role, hits.timestamp,
              ts_headline('simple', hits.content, query.q, :options) AS snippet
       FROM hits CROSS JOIN query
       JOIN conversations c ON c.id = hits.conversation_id
       LEFT JOIN users u ON u.id = COALESCE(hits.author_id, c.user_id)
       ORDER BY hits.timestamp DESC"""
)
# The event's message by its claim (message_events, revision 0007); the reply to it is
# the next message of its conversation, if it is the assistant's.
_EVENT = text(
    """SELECT u.id AS message_id, u.conversation_id, us.channel_user_id, u.timestamp,
              r.id AS reply_id, r.timestamp AS reply_timestamp, r.model_used AS reply_model
       FROM message_events e
       JOIN messages u ON u.id = e.message_id AND u.timestamp = e.message_timestamp
       JOIN conversations c ON c.id = u.conversation_id
       JOIN users us ON us.id = COALESCE(u.author_id, c.user_id)
       LEFT JOIN LATERAL (
           SELECT id, role, timestamp, model_used FROM messages n
           WHERE n.conversation_id = u.conversation_id AND n.timestamp > u.timestamp
           ORDER BY n.timestamp LIMIT 1
       ) r ON r.role = 'assistant'
       WHERE e.channel_type = :channel AND e.platform_message_id = :event"""
)
# The chat's scope and its threads' ('chat:{id}' and 'chat:{id}:thread:…'), or one thread's.
_CHAT_CONVERSATIONS = text(
    """SELECT c.id, c.scope, c.is_active, u.channel_user_id, u.username, c.last_activity,
              (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages
       FROM conversations c LEFT JOIN users u ON u.id = c.user_id
       WHERE c.channel_type = :channel
         AND (c.scope = :scope OR (:whole_chat AND c.scope LIKE :threads ESCAPE '\\'))
       ORDER BY c.is_active DESC, c.last_activity DESC LIMIT :limit"""
)
_HEADLINE = 'StartSel="{}", StopSel="{}", MaxWords=30, MinWords=12, ShortWord=0'


class OpsQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def user_with_conversations(
        self, channel: str, channel_user_id: str
    ) -> UserConversations | None:
        """The user's row and a summary of each of their conversations; None if no such user."""

        async def work(connection: AsyncConnection) -> UserConversations | None:
            return await _user_with_conversations(connection, channel, channel_user_id)

        return await self._database.once(work)

    async def export_user(
        self, channel: str, channel_user_id: str, progress: Progress
    ) -> UserExport | None:
        """The user's row and every conversation with all its messages (of a shared
        one, the messages they wrote); `progress` is told of each conversation read.
        None if no such user."""

        async def work(connection: AsyncConnection) -> UserExport | None:
            # One snapshot: messages arriving meanwhile are either all in or all out.
            await connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            await connection.begin()
            found = await _user_with_conversations(connection, channel, channel_user_id)
            if found is None:
                return None
            conversations = []
            for conversation in found.conversations:
                params = {
                    "conversation_id": conversation.id,
                    "shared": conversation.shared,
                    "user_id": found.user.id,
                }
                rows = await connection.execute(_ALL_MESSAGES, params)
                messages = tuple(MessageRow(**row._mapping) for row in rows)
                conversations.append(ExportedConversation(conversation, messages))
                progress(1)
            return UserExport(found.user, tuple(conversations))

        return await self._database.once(work)

    async def delete_user(self, channel: str, channel_user_id: str) -> UserConversations | None:
        """Delete the user's row, and with it (ON DELETE CASCADE) their conversations and
        messages, and what they wrote in shared ones, and their messages still in the
        inbox; what was deleted (the shared conversations themselves stay), or None if
        no such user."""

        async def work(connection: AsyncConnection) -> UserConversations | None:
            async with connection.begin():
                row = await _user(connection, channel, channel_user_id)
                if row is None:
                    return None
                await connection.execute(_LOCK_USER, {"id": row.id})
                conversations = await _conversations(connection, row.id)
                await connection.execute(_DELETE_USER, {"id": row.id})
                writer = {"channel": channel, "channel_user_id": channel_user_id}
                await connection.execute(_DELETE_USER_INBOX, writer)
            return UserConversations(row, conversations)

        return await self._database.once(work)

    async def conversation_history(
        self, conversation_id: uuid.UUID, limit: int
    ) -> ConversationHistory | None:
        """The conversation and its newest `limit` messages, oldest first; None if none."""

        async def work(connection: AsyncConnection) -> ConversationHistory | None:
            row = (await connection.execute(_CONVERSATION, {"id": conversation_id})).first()
            if row is None:
                return None
            found = await connection.execute(_RECENT, {"id": conversation_id, "limit": limit})
            messages = tuple(RecentMessage(**message._mapping) for message in found)
            return ConversationHistory(ConversationRow(**row._mapping), messages)

        return await self._database.once(work)

    async def event(self, channel: str, event_id: str) -> StoredEvent | None:
        """What Postgres holds for a platform event (its id as stored); None: nothing."""
        params = {"channel": channel, "event": event_id}

        async def work(connection: AsyncConnection) -> StoredEvent | None:
            row = (await connection.execute(_EVENT, params)).first()
            return None if row is None else StoredEvent(**row._mapping)

        return await self._database.once(work)

    async def chat_conversations(
        self, channel: str, scope: str, whole_chat: bool, limit: int
    ) -> list[ChatConversation]:
        """The conversations held in `scope` (a chat's; with `whole_chat`, its threads'
        too), active first, the most recent first."""
        escaped = scope.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params = {
            "channel": channel,
            "scope": scope,
            "whole_chat": whole_chat,
            "threads": f"{escaped}:thread:%",
            "limit": limit,
        }

        async def work(connection: AsyncConnection) -> list[ChatConversation]:
            rows = await connection.execute(_CHAT_CONVERSATIONS, params)
            return [ChatConversation(**row._mapping) for row in rows]

        return await self._database.once(work)

    async def search_messages(
        self, query: str, limit: int, marks: tuple[str, str]
    ) -> list[SearchHit]:
        """Messages matching a web-search style query (words, "a phrase", -not, or),
        newest first; in each snippet the matched words stand between `marks`."""
        params = {"text": query, "limit": limit, "options": _HEADLINE.format(*marks)}

        async def work(connection: AsyncConnection) -> list[SearchHit]:
            return [SearchHit(**row._mapping) for row in await connection.execute(_SEARCH, params)]

        return await self._database.once(work)


async def _user(connection: AsyncConnection, channel: str, channel_user_id: str) -> UserRow | None:
    params = {"channel": channel, "channel_user_id": channel_user_id}
    row = (await connection.execute(_USER, params)).first()
    return None if row is None else UserRow(**row._mapping)


async def _conversations(
    connection: AsyncConnection, user_id: uuid.UUID
) -> tuple[ConversationSummary, ...]:
    rows = await connection.execute(_CONVERSATIONS, {"user_id": user_id})
    return tuple(ConversationSummary(**row._mapping) for row in rows)


async def _user_with_conversations(
    connection: AsyncConnection, channel: str, channel_user_id: str
) -> UserConversations | None:
    row = await _user(connection, channel, channel_user_id)
    if row is None:
        return None
    return UserConversations(row, await _conversations(connection, row.id))
