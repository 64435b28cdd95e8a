"""A message's first round trip to Postgres when Redis holds nothing of its place: one
statement, no BEGIN, that upserts the writer, finds or opens the conversation of the
place (theirs, or the shared one), and reads the platform's channel config and the
conversation's newest messages.

Run on its own, the statement is atomic. Should another handling open the same
conversation between this statement's snapshot and its insert (two first messages at
once), the insert does nothing and no conversation comes back: the caller then takes
the path of several statements (ConversationQueries.load_session), which waits and
reads the winner. A retry after a lost answer finds what the first try did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bot.domain import ChannelSettings, ContextMessage, RecentContext, SessionState
from bot.store.database import Database
from bot.store.summaries import context_select
from bot.store.user_upsert import UPSERT_WRITER_ON_CONFLICT

# $1 channel, $2 the writer's platform id, $3 their display name, $4 the scope,
# $5 shared (the scope's conversation, nobody's own), $6 how many messages to read.
_START = f"""
WITH writer AS (
    INSERT INTO users (channel_type, channel_user_id, username)
    VALUES ($1, $2, $3)
    {UPSERT_WRITER_ON_CONFLICT}
), found AS (
    SELECT c.id, c.model_override, c.last_message_id FROM conversations c, writer
    WHERE c.scope = $4 AND c.is_active
      AND CASE WHEN $5 THEN c.user_id IS NULL AND c.channel_type = $1
               ELSE c.user_id = writer.id END
), opened AS (
    INSERT INTO conversations (user_id, channel_type, scope)
    SELECT CASE WHEN $5 THEN NULL ELSE writer.id END, $1, $4 FROM writer
    WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT DO NOTHING
    RETURNING id, model_override, last_message_id
), conversation AS (
    SELECT * FROM found UNION ALL SELECT * FROM opened
)
SELECT writer.id AS user_id, writer.preferred_model,
       conversation.id AS conversation_id, conversation.model_override,
       conversation.last_message_id,
       config.default_model AS channel_model, config.settings AS channel_settings,
       (SELECT json_agg(json_strip_nulls(json_build_object(
                   'role', m.role, 'content', m.content,
                   'ts', extract(epoch FROM m.timestamp),
                   'name', m.author, 'sum', m.covers))
               ORDER BY m.timestamp DESC, m.role DESC)
        FROM ({context_select("conversation.id", "$6")}) AS m) AS context
FROM writer
LEFT JOIN conversation ON true
LEFT JOIN channel_configs config ON config.channel_type = $1
"""


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What Postgres holds for a message whose place Redis has forgotten."""

    session: SessionState
    channel: ChannelSettings  # the platform's channel_configs row (defaults without one)
    context: RecentContext  # newest first, and the fence it was read at


async def start_turn(
    database: Database,
    channel: str,
    channel_user_id: str,
    username: str | None,
    scope: str,
    shared: bool,
    context_limit: int,
) -> TurnStart | None:
    """One round trip; None when a racing handling opened the conversation meanwhile."""
    args = (channel, channel_user_id, username, scope, shared, context_limit)
    row = await database.statement(_START, *args)
    if row is None or row["conversation_id"] is None:
        return None
    preferred = None if shared else row["preferred_model"]
    override = row["model_override"]
    session = SessionState(
        row["user_id"], row["conversation_id"], override or preferred, pinned=bool(override)
    )
    platform = ChannelSettings(row["channel_model"], _json(row["channel_settings"]) or {})
    items = _json(row["context"]) or []
    context = RecentContext([ContextMessage.from_fields(i) for i in items], row["last_message_id"])
    return TurnStart(session, platform, context)


def _json(value: Any) -> Any:
    """A json or jsonb value: decoded already by the pool's connections (SQLAlchemy sets
    asyncpg's codecs), or text from a connection without them."""
    return json.loads(value) if isinstance(value, str) else value
