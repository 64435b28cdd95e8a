"""The SQL of the message flow: sessions, context, channel config, the exchange, and
the commands' changes. Each public method is one transaction, retried as a unit."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import (
    DM_SCOPE,
    ChannelSettings,
    Interruption,
    RecentContext,
    SessionState,
    StoredExchange,
)
from bot.errors import StaleSession, StoreConflict, StoreFailed, TurnConflict
from bot.experimentset import Assignment
from bot.store.database import Database
from bot.store.summaries import context_message, context_select
from bot.store.turn_start import TurnStart, start_turn
from bot.store.user_upsert import UPSERT_WRITER_ON_CONFLICT

FOREIGN_KEY_VIOLATION = "23503"  # SQLSTATE: here, the conversation was deleted meanwhile

_UPSERT_USER = text(
    f"""
    INSERT INTO users (channel_type, channel_user_id, username)
    VALUES (:channel, :channel_user_id, :username)
    {UPSERT_WRITER_ON_CONFLICT}
    """
)

# The partial unique index makes this safe under concurrency: of two racing inserts
# one wins, the other does nothing and then reads the winner.
_OPEN_CONVERSATION = text(
    """
    INSERT INTO conversations (user_id, channel_type, scope)
    VALUES (:user_id, :channel, :scope)
    ON CONFLICT (user_id, scope) WHERE is_active DO NOTHING
    RETURNING id, model_override
    """
)

_ACTIVE_CONVERSATION = text(
    """
    SELECT id, model_override FROM conversations
    WHERE user_id = :user_id AND scope = :scope AND is_active
    """
)

# The conversation's context (its latest summary and the newest messages after what it
# covers: bot/store/summaries.py), with who wrote each user message of a shared
# conversation (NULL elsewhere), and its newest message as the fence knows it: one row
# per message, or one row of NULLs beside it when there is none yet.
_RECENT_MESSAGES = text(
    f"""
    SELECT c.last_message_id, m.role, m.content, m.timestamp, m.author, m.covers
    FROM conversations c
    LEFT JOIN LATERAL ({context_select("c.id", ":limit")}) m ON true
    WHERE c.id = :conversation_id
    ORDER BY m.timestamp DESC, m.role DESC
    """
)

# A shared conversation belongs to its scope: one active per (channel, scope), by the
# partial unique index; of two racing inserts one wins and the other reads it.
_OPEN_SHARED = text(
    """
    INSERT INTO conversations (user_id, channel_type, scope)
    VALUES (NULL, :channel, :scope)
    ON CONFLICT (channel_type, scope) WHERE is_active AND user_id IS NULL DO NOTHING
    RETURNING id, model_override
    """
)
_ACTIVE_SHARED = text(
    """
    SELECT id, model_override FROM conversations
    WHERE channel_type = :channel AND scope = :scope AND user_id IS NULL AND is_active
    """
)
_CLOSE_SHARED = text(
    """
    UPDATE conversations SET is_active = false
    WHERE channel_type = :channel AND scope = :scope AND user_id IS NULL AND is_active
    """
)

_CHANNEL_CONFIG = text(
    "SELECT default_model, settings FROM channel_configs WHERE channel_type = :channel"
)

# One statement: lock the conversation if it is still active (a concurrent /reset
# waits for us, or we see it closed), claim the platform event (message_events, whose
# key is the event's: revision 0007), store the user's message if the claim went in
# (or it has no platform id) and this very row is not there yet, and store the reply
# with its claim (message_replies) and touch the conversation only if the user's
# message went in: nothing inserted, nothing changed. Of two handlings of one event,
# the second waits on the first's claim and then inserts nothing.
# The turn's fence (revision 0006): the message goes in only if the conversation's
# newest message is still the one its context ended with, and nobody is streaming a
# reply. The row lock makes it exact: waiting for a racing writer, Postgres re-reads
# the locked row as that writer committed it.
# It runs in an explicit transaction all the same: a statement sent to a server that
# hangs and then resumes must not commit after the user was told it failed.
# Sent by asyncpg itself (see Database.prepared), hence positional parameters:
# $1 conversation, $2 user message id, $3 user text, $4 user time, $5 user tokens,
# $6 channel, $7 platform message id, $8 reply id, $9 reply text, $10 reply time
# (also the new last_activity), $11 reply tokens, $12 model used, $13 has a reply,
# $14 the writer (a shared conversation's; else NULL), $15 the newest message the
# context held (NULL: none), $16 seconds the turn is held for the streamed reply to
# come (NULL: the reply is stored now, or never), $17 the session's model (its
# conversation's override, else its writer's preference; NULL: none), $18 the user
# message's metadata and $19 the reply's (JSON text: with {"moderated": …} for a refusal
# stored in place of a reply), $20 the experiment the writer is
# in (NULL: none) and $21 their variant, recorded with their message (the first
# exchange in it records it: ON CONFLICT DO NOTHING), $22 the writer's user id.
# The fence covers the session's model too: a cached session older than a /model is
# as stale as a context older than the last message (a Redis restored from an older
# snapshot), and is caught by this statement, not by a read before it.
_SAVE_EXCHANGE = """
    WITH conversation AS (
        SELECT id, last_message_id, reply_due > now() AS held,
               coalesce(model_override, (SELECT preferred_model FROM users
                                         WHERE users.id = conversations.user_id)) AS model
        FROM conversations
        WHERE id = $1 AND is_active
        FOR NO KEY UPDATE
    ), fenced AS (
        SELECT id FROM conversation
        WHERE last_message_id IS NOT DISTINCT FROM $15 AND held IS NOT TRUE
          AND model IS NOT DISTINCT FROM $17
    ), event AS (
        INSERT INTO message_events (channel_type, platform_message_id, message_id,
                                    message_timestamp)
        SELECT $6, $7, $2, $4 FROM fenced WHERE $7::varchar IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING message_id
    ), user_message AS (
        INSERT INTO messages (id, conversation_id, role, content, timestamp, token_count,
                              channel_type, platform_message_id, author_id, metadata)
        SELECT $2, id, 'user', $3, $4, $5, $6, $7, $14, $18::jsonb
        FROM fenced WHERE $7::varchar IS NULL OR EXISTS (SELECT 1 FROM event)
        ON CONFLICT DO NOTHING
        RETURNING id
    ), reply AS (
        INSERT INTO messages (id, conversation_id, role, content, timestamp, token_count,
                              channel_type, model_used, reply_to, metadata)
        SELECT $8, $1, 'assistant', $9, $10, $11, $6, $12, user_message.id, $19::jsonb
        FROM user_message WHERE $13
    ), assigned AS (
        INSERT INTO experiment_assignments (experiment, user_id, variant)
        SELECT $20, $22, $21 FROM user_message WHERE $20::varchar IS NOT NULL
        ON CONFLICT DO NOTHING
    ), reply_claim AS (
        INSERT INTO message_replies (reply_to, reply_id, reply_timestamp)
        SELECT user_message.id, $8, $10 FROM user_message WHERE $13
    ), touched AS (
        UPDATE conversations SET last_activity = $10,
               last_message_id = CASE WHEN $13 THEN $8 ELSE $2 END,
               reply_due = now() + make_interval(secs => $16)
        FROM user_message WHERE conversations.id = $1
    )
    SELECT (SELECT id FROM conversation) AS conversation_id,
           (SELECT id FROM user_message) AS user_message_id,
           EXISTS (SELECT 1 FROM fenced) AS fenced,
           (SELECT held FROM conversation) IS TRUE AS held
"""

# The user message stored by an earlier attempt of ours (:id) or for the same platform
# event, and its reply if it has one (an exchange whose responder failed has none).
# Each message is found by its whole key (id, timestamp): one partition searched.
_STORED_EXCHANGE = text(
    """
    WITH found AS (
        SELECT id, timestamp FROM messages WHERE id = :id AND timestamp = :ts
        UNION ALL
        SELECT m.id, m.timestamp FROM message_events e
        JOIN messages m ON m.id = e.message_id AND m.timestamp = e.message_timestamp
        WHERE e.channel_type = :channel AND e.platform_message_id = :event
    )
    SELECT u.id, r.content AS reply_text, r.model_used, r.id AS reply_id
    FROM found AS u
    LEFT JOIN message_replies AS c ON c.reply_to = u.id
    LEFT JOIN messages AS r ON r.id = c.reply_id AND r.timestamp = c.reply_timestamp
    ORDER BY u.id = :id DESC
    LIMIT 1
    """
)

# A streamed reply, stored once the responder is done (or cut off), before the
# platform's final update, if its user message is still the conversation's newest (no
# other handling took the turn meanwhile); it gives the turn back. One reply per user
# message (its claim in message_replies goes first): a second one inserts nothing.
# `ours`: an earlier try of this very call committed (its answer was lost).
# Sent by asyncpg itself: $1 conversation, $2 the user message, $3 reply id, $4 text,
# $5 time (also the new last_activity), $6 tokens, $7 channel, $8 model used,
# $9 metadata (JSON text).
_SAVE_REPLY = """
    WITH conversation AS (
        SELECT id FROM conversations WHERE id = $1 AND last_message_id = $2
        FOR NO KEY UPDATE
    ), claim AS (
        INSERT INTO message_replies (reply_to, reply_id, reply_timestamp)
        SELECT $2, $3, $5 FROM conversation
        ON CONFLICT DO NOTHING
        RETURNING reply_id
    ), reply AS (
        INSERT INTO messages (id, conversation_id, role, content, timestamp, token_count,
                              channel_type, model_used, reply_to, metadata)
        SELECT $3, $1, 'assistant', $4, $5, $6, $7, $8, $2, $9::jsonb FROM claim
        ON CONFLICT DO NOTHING
        RETURNING id
    ), touched AS (
        UPDATE conversations SET last_activity = $5, last_message_id = $3, reply_due = NULL
        FROM reply WHERE conversations.id = $1
    )
    SELECT (SELECT id FROM reply) IS NOT NULL
           OR EXISTS (SELECT 1 FROM messages WHERE id = $3 AND timestamp = $5) AS stored
"""

# The turn of a streamed reply, held a while longer (or given back: NULL seconds) by the
# worker writing it, while its user message is still the conversation's newest.
_HOLD_TURN = """
    UPDATE conversations SET reply_due = now() + make_interval(secs => $3)
    WHERE id = $1 AND last_message_id = $2
    RETURNING id
"""

_CLOSE_ACTIVE = text(
    """
    UPDATE conversations SET is_active = false
    WHERE user_id = :user_id AND scope = :scope AND is_active
    """
)

_SET_PREFERRED_MODEL = text(
    "UPDATE users SET preferred_model = :model, updated_at = now() WHERE id = :user_id"
)

_MODEL_OVERRIDE = text("SELECT model_override FROM conversations WHERE id = :conversation_id")

_SET_MODEL_OVERRIDE = text(
    "UPDATE conversations SET model_override = :model WHERE id = :conversation_id"
)


@dataclass(frozen=True, slots=True)
class ExchangeRows:
    """One exchange to store; ids are chosen here so a retried commit is recognised."""

    conversation_id: uuid.UUID
    channel: str
    platform_message_id: str | None
    user_text: str
    user_ts: datetime
    user_tokens: int | None
    reply_text: str | None
    reply_ts: datetime
    reply_tokens: int | None
    model_used: str | None
    user_message_id: uuid.UUID
    reply_id: uuid.UUID
    author_id: uuid.UUID | None = None  # who wrote it, in a shared conversation
    seen: uuid.UUID | None = None  # the newest message its context held: the fence
    hold_seconds: float | None = None  # streamed: the turn is held this long for the reply
    session_model: str | None = None  # the model its session named: the fence's too
    assignment: Assignment | None = None  # the writer's variant of an experiment
    latency_ms: int | None = None  # the responder's time to the whole reply
    moderated: str | None = None  # a refusal stored in place of the reply: why

    def user_metadata(self) -> str:
        return json.dumps(self.assignment.metadata() if self.assignment else {})

    def reply_metadata(self) -> str:
        extra = {"moderated": self.moderated} if self.moderated else None
        return reply_metadata(self.assignment, self.latency_ms, extra)


@dataclass(frozen=True, slots=True)
class ReplyRow:
    """A streamed reply to store, after its user message was stored on its own."""

    conversation_id: uuid.UUID
    user_message_id: uuid.UUID
    reply_id: uuid.UUID
    channel: str
    text: str
    ts: datetime
    tokens: int | None
    model_used: str | None
    interrupted: Interruption | None = None  # cut off: why (messages.metadata says so)
    assignment: Assignment | None = None  # the writer's variant of an experiment
    latency_ms: int | None = None  # the responder's time to the whole reply (or the cut)
    moderated: str | None = None  # a refusal stored in place of the reply: why

    def metadata(self) -> str:
        cut = self.interrupted
        status = {"status": "interrupted", "reason": cut.value} if cut is not None else {}
        if self.moderated:
            status["moderated"] = self.moderated
        return reply_metadata(self.assignment, self.latency_ms, status)


def reply_metadata(
    assignment: Assignment | None, latency_ms: int | None, extra: dict[str, str] | None = None
) -> str:
    """A reply's messages.metadata as JSON: the experiment and variant it was written
    in, the responder's latency (ms), and (a cut-off stream) why it was cut."""
    found: dict[str, object] = dict(extra or {})
    if assignment is not None:
        found.update(assignment.metadata())
    if latency_ms is not None:
        found["latency_ms"] = latency_ms
    return json.dumps(found)


class ConversationQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def load_session(
        self,
        channel: str,
        channel_user_id: str,
        username: str | None,
        scope: str = DM_SCOPE,
        shared: bool = False,
    ) -> SessionState:
        """Upsert the user and find or open their active conversation in `scope` (with
        `shared`, the scope's shared conversation, whose model is its override alone)."""

        async def work(connection: AsyncConnection) -> SessionState:
            user = (
                await connection.execute(
                    _UPSERT_USER,
                    {"channel": channel, "channel_user_id": channel_user_id, "username": username},
                )
            ).one()
            params = {"user_id": user.id, "channel": channel, "scope": scope}
            conversation = await self._open_or_find_active(connection, params, shared)
            preferred = None if shared else user.preferred_model
            return SessionState(
                user_id=user.id,
                conversation_id=conversation.id,
                model=conversation.model_override or preferred,
                pinned=bool(conversation.model_override),
            )

        return await self._database.transaction(work)

    async def start_turn(
        self,
        channel: str,
        channel_user_id: str,
        username: str | None,
        scope: str,
        shared: bool,
        context_limit: int,
    ) -> TurnStart | None:
        """Writer, conversation, channel config and context in one round trip
        (bot/store/turn_start.py); None when a racing handling opened the conversation."""
        return await start_turn(
            self._database, channel, channel_user_id, username, scope, shared, context_limit
        )

    async def load_context(self, conversation_id: uuid.UUID, limit: int) -> RecentContext:
        """The context, newest first: the newest `limit` messages (after what the latest
        summary covers, and that summary last), and the fence they were read at."""

        async def work(connection: AsyncConnection) -> RecentContext:
            params = {"conversation_id": conversation_id, "limit": limit}
            rows = (await connection.execute(_RECENT_MESSAGES, params)).all()
            messages = [context_message(row) for row in rows if row.role is not None]
            return RecentContext(messages, rows[0].last_message_id if rows else None)

        return await self._database.transaction(work)

    async def load_channel(self, channel: str) -> ChannelSettings:
        async def work(connection: AsyncConnection) -> ChannelSettings:
            row = (await connection.execute(_CHANNEL_CONFIG, {"channel": channel})).first()
            if row is None:
                return ChannelSettings()
            return ChannelSettings(default_model=row.default_model, settings=dict(row.settings))

        return await self._database.transaction(work)

    async def save_exchange(self, rows: ExchangeRows) -> StoredExchange:
        """Store the user's message and the reply (if any) in one transaction; with
        `hold_seconds`, the message alone, holding the turn for its streamed reply.

        Raises StaleSession when the conversation is gone or closed, and TurnConflict
        when it moved on since `rows.seen` (bot/errors.py).
        """

        try:
            row = await self._database.prepared(_SAVE_EXCHANGE, *_exchange_args(rows))
        except StoreConflict as exc:
            if exc.sqlstate != FOREIGN_KEY_VIOLATION:
                raise
            raise StaleSession(f"conversation {rows.conversation_id} is gone") from exc
        conversation_id, user_message_id, fenced, held = row
        if conversation_id is None:
            raise StaleSession(f"conversation {rows.conversation_id} is not active")
        if user_message_id is not None:
            return StoredExchange(user_message_id)
        found = await self._stored_exchange(rows)
        if found is None and not fenced:
            raise TurnConflict(rows.conversation_id, held=held)
        return found or StoredExchange(rows.user_message_id, duplicate=True)

    async def save_reply(self, row: ReplyRow) -> bool:
        """Store a streamed reply to its user message, giving the turn back; False: not
        stored, as another handling stored a message since (or this event's reply)."""
        found = await self._database.prepared(
            _SAVE_REPLY,
            *(row.conversation_id, row.user_message_id, row.reply_id, row.text, row.ts),
            *(row.tokens, row.channel, row.model_used, row.metadata()),
        )
        return bool(found[0])

    async def hold_turn(
        self, conversation_id: uuid.UUID, user_message_id: uuid.UUID, seconds: float | None
    ) -> bool:
        """Hold the turn of the streamed reply to `user_message_id` `seconds` longer
        (None: give it back, no reply coming); False if another handling has it now."""
        args = (conversation_id, user_message_id, seconds)
        return await self._database.statement(_HOLD_TURN, *args) is not None

    async def _stored_exchange(self, rows: ExchangeRows) -> StoredExchange | None:
        """What is stored for an exchange that inserted nothing: an earlier attempt of ours
        (it committed, its acknowledgement was lost), or another handling of the same
        platform event (a redelivery), with the reply stored then; None if neither."""

        async def work(connection: AsyncConnection) -> Any:
            params = {
                "id": rows.user_message_id,
                "ts": rows.user_ts,
                "channel": rows.channel,
                "event": rows.platform_message_id,
            }
            return (await connection.execute(_STORED_EXCHANGE, params)).first()

        found = await self._database.transaction(work)
        if found is None:
            return None
        if found.id == rows.user_message_id:
            return StoredExchange(found.id)
        return StoredExchange(found.id, True, found.reply_text, found.model_used, found.reply_id)

    async def reset_conversation(
        self, user_id: uuid.UUID, channel: str, scope: str = DM_SCOPE, shared: bool = False
    ) -> SessionState:
        """Close the user's active conversation in `scope` (with `shared`, the scope's
        shared one) and open a new one there."""

        async def work(connection: AsyncConnection) -> SessionState:
            params = {"user_id": user_id, "channel": channel, "scope": scope}
            await connection.execute(_CLOSE_SHARED if shared else _CLOSE_ACTIVE, params)
            # A reset racing ours may have opened one first: then both end up in it.
            conversation = await self._open_or_find_active(connection, params, shared)
            if shared:
                override = conversation.model_override
                return SessionState(user_id, conversation.id, override, pinned=bool(override))
            preferred = (
                await connection.execute(
                    text("SELECT preferred_model FROM users WHERE id = :user_id"), params
                )
            ).scalar_one()
            override = conversation.model_override
            return SessionState(
                user_id, conversation.id, override or preferred, pinned=bool(override)
            )

        return await self._database.transaction(work)

    @staticmethod
    async def _open_or_find_active(
        connection: AsyncConnection, params: dict[str, Any], shared: bool = False
    ) -> Any:
        """The row (id, model_override) of a conversation opened now, or of the active one.

        Opening does nothing when another transaction holds the active conversation; a
        fresh statement then sees it, unless it was closed in between.
        """
        opening, finding = (
            (_OPEN_SHARED, _ACTIVE_SHARED) if shared else (_OPEN_CONVERSATION, _ACTIVE_CONVERSATION)
        )
        for _ in range(3):
            opened = (await connection.execute(opening, params)).first()
            if opened is not None:
                return opened
            active = (await connection.execute(finding, params)).first()
            if active is not None:
                return active
        user, scope = params["user_id"], params["scope"]
        raise StoreFailed(f"the active conversation of user {user} in {scope} keeps changing")

    async def set_model_override(self, session: SessionState, model: str | None) -> SessionState:
        """Pin the session's conversation to `model` (None: unpin); the session after it."""
        params = {"conversation_id": session.conversation_id, "model": model}

        async def work(connection: AsyncConnection) -> SessionState:
            await connection.execute(_SET_MODEL_OVERRIDE, params)
            return SessionState(
                session.user_id, session.conversation_id, model, pinned=model is not None
            )

        return await self._database.transaction(work)

    async def set_preferred_model(self, session: SessionState, model: str | None) -> SessionState:
        """Set the user's preferred model; returns the session's resolved model after it."""

        async def work(connection: AsyncConnection) -> SessionState:
            await connection.execute(
                _SET_PREFERRED_MODEL, {"user_id": session.user_id, "model": model}
            )
            override = (
                await connection.execute(
                    _MODEL_OVERRIDE, {"conversation_id": session.conversation_id}
                )
            ).scalar_one_or_none()
            return SessionState(
                session.user_id, session.conversation_id, override or model, bool(override)
            )

        return await self._database.transaction(work)


def _exchange_args(rows: ExchangeRows) -> tuple[Any, ...]:
    return (
        rows.conversation_id,
        rows.user_message_id,
        rows.user_text,
        rows.user_ts,
        rows.user_tokens,
        rows.channel,
        rows.platform_message_id,
        rows.reply_id,
        rows.reply_text or "",
        rows.reply_ts,
        rows.reply_tokens,
        rows.model_used,
        rows.reply_text is not None,
        rows.author_id,
        rows.seen,
        rows.hold_seconds,
        rows.session_model,
        rows.user_metadata(),
        rows.reply_metadata(),
        rows.assignment.experiment if rows.assignment else None,
        rows.assignment.variant if rows.assignment else None,
        rows.assignment.user_id if rows.assignment else None,
    )
