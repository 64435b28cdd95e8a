"""What `bot ops conversation show|search` read.

Search is Postgres full-text search over messages.content, served by the GIN index
ix_messages_content_fts of revision 0003; the WHERE clause repeats the indexed
expression, to_tsvector('simple', content), so that the planner can use it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.ops.errors import NotFound
from bot.ops.records import context_item, ttl_or_none

HIGHLIGHT = ("«", "»")  # around the matched words of a search snippet

_CONVERSATION = text(
    """SELECT c.id, c.channel_type, c.is_active, c.model_override, c.started_at,
              c.last_activity, c.user_id, u.channel_user_id, u.username,
              (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages
       FROM conversations c JOIN users u ON u.id = c.user_id WHERE c.id = :id"""
)
_RECENT = text(
    """SELECT * FROM (
           SELECT id, role, model_used, token_count, timestamp, content FROM messages
           WHERE conversation_id = :id ORDER BY timestamp DESC, role LIMIT :limit
       ) recent ORDER BY timestamp, role DESC"""
)
# The matches first (the index finds them, newest first), then a snippet for each of
# the few kept: ts_headline reads the whole text, so it runs after the LIMIT.
_SEARCH = text(
    """WITH query AS (SELECT websearch_to_tsquery('simple', :text) AS q),
       hits AS (
           SELECT m.id, m.conversation_id, m.role, m.timestamp, m.content
           FROM messages m, query
           WHERE to_tsvector('simple', m.content) @@ query.q
           ORDER BY m.timestamp DESC LIMIT :limit
       )
       SELECT hits.conversation_id, hits.id AS message_id, u.channel_type AS channel,
              u.channel_user_id, u.username, hits.role, hits.timestamp,
              ts_headline('simple', hits.content, query.q, :options) AS snippet
       FROM hits CROSS JOIN query
       JOIN conversations c ON c.id = hits.conversation_id JOIN users u ON u.id = c.user_id
       ORDER BY hits.timestamp DESC"""
)
_HEADLINE = (
    f'StartSel="{HIGHLIGHT[0]}", StopSel="{HIGHLIGHT[1]}", MaxWords=30, MinWords=12, ShortWord=0'
)


def _is_cached(message: dict[str, Any], cached: list[dict[str, Any]]) -> bool:
    """The cache holds role, content and the timestamp as epoch seconds (a float)."""
    stamp: datetime = message["timestamp"]
    return any(
        item.get("role") == message["role"]
        and item.get("content") == message["content"]
        and abs((item["timestamp"] - stamp).total_seconds()) < 0.001
        for item in cached
    )


async def show_conversation(
    engine: AsyncEngine, redis: Redis, keys: Keys, conversation_id: uuid.UUID, limit: int
) -> dict[str, Any]:
    """The newest `limit` messages, oldest first, each marked if also in the cached context."""
    async with engine.connect() as connection:
        row = (await connection.execute(_CONVERSATION, {"id": conversation_id})).first()
        if row is None:
            raise NotFound(f"no conversation {conversation_id}")
        found = await connection.execute(_RECENT, {"id": conversation_id, "limit": limit})
        messages = [dict(message._mapping) for message in found]
    key = keys.context(conversation_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lrange(key, 0, -1)
        pipe.ttl(key)
        raw, ttl = await pipe.execute()
    cached = [item for item in map(context_item, raw) if "timestamp" in item]
    for message in messages:
        message["cached"] = _is_cached(message, cached)
    return {
        "conversation": dict(row._mapping),
        "context": {"key": key, "length": len(raw), "ttl_seconds": ttl_or_none(ttl)},
        "messages": messages,
    }


async def search_messages(engine: AsyncEngine, query: str, limit: int) -> dict[str, Any]:
    """Messages matching a web-search style query (words, "a phrase", -not, or), newest first."""
    params = {"text": query, "limit": limit, "options": _HEADLINE}
    async with engine.connect() as connection:
        results = [dict(row._mapping) for row in await connection.execute(_SEARCH, params)]
    return {"query": query, "limit": limit, "results": results}
