"""What `bot ops conversation show|search` read: the conversation's newest messages,
each marked if also in the Redis context, and full-text search over all messages. Both
read the replica of DATABASE_READ_URL, if there is one."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from bot.errors import NotFound
from bot.ops.context import Ops
from bot.ops.records import context_item
from bot.store.records import RecentMessage

HIGHLIGHT = ("«", "»")  # around the matched words of a search snippet


def _is_cached(message: RecentMessage, cached: list[dict[str, Any]]) -> bool:
    """The cache holds role, content and the timestamp as epoch seconds (a float)."""
    return any(
        item.get("role") == message.role
        and item.get("content") == message.content
        and abs((item["timestamp"] - message.timestamp).total_seconds()) < 0.001
        for item in cached
    )


async def show_conversation(ops: Ops, conversation_id: uuid.UUID, limit: int) -> dict[str, Any]:
    """The newest `limit` messages, oldest first, each marked if also in the cached context."""
    history = await ops.reads.records.conversation_history(conversation_id, limit)
    if history is None:
        raise NotFound(f"no conversation {conversation_id}")
    row = history.conversation
    session = ops.cache.keys.conversation_session(row.channel_type, row.scope, row.channel_user_id)
    context = await ops.cache.context(conversation_id, session)
    cached = [item for item in map(context_item, context.items) if "timestamp" in item]
    return {
        "conversation": asdict(history.conversation),
        "context": {"key": context.key, "length": len(context.items), "ttl_seconds": context.ttl},
        "messages": [
            {**asdict(message), "cached": _is_cached(message, cached)}
            for message in history.messages
        ],
    }


async def search_messages(ops: Ops, query: str, limit: int) -> dict[str, Any]:
    """Messages matching a web-search style query (words, "a phrase", -not, or), newest first."""
    hits = await ops.reads.records.search_messages(query, limit, HIGHLIGHT)
    return {"query": query, "limit": limit, "results": [asdict(hit) for hit in hits]}
