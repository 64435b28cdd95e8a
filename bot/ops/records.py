"""What `bot ops user …` and `bot ops conversation …` read (and, for delete, erase).

Postgres rows are the record; the Redis side is what is cached about the same user
or conversation, found by the key names of Keys (bot/cache/keys.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.cache.hotstate import decode_context
from bot.cache.keys import Keys
from bot.ops.errors import NotFound
from bot.ops.inspect import Progress, as_text

_USER = text(
    """SELECT id, channel_type, channel_user_id, username, preferred_model, created_at,
              updated_at, metadata
       FROM users WHERE channel_type = :channel AND channel_user_id = :channel_user_id"""
)
_CONVERSATIONS = text(
    """SELECT c.id, c.is_active, c.model_override, c.started_at, c.last_activity, c.metadata,
              count(m.id) AS messages, coalesce(sum(m.token_count), 0) AS tokens
       FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
       WHERE c.user_id = :user_id GROUP BY c.id ORDER BY c.started_at DESC"""
)
_ALL_MESSAGES = text(
    """SELECT id, role, content, model_used, token_count, timestamp, platform_message_id,
              metadata
       FROM messages WHERE conversation_id = :conversation_id ORDER BY timestamp, role DESC"""
)
_LOCK_USER = text("SELECT id FROM users WHERE id = :id FOR UPDATE")
_DELETE_USER = text("DELETE FROM users WHERE id = :id")


def _row(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


async def _find_user(connection: AsyncConnection, channel: str, user: str) -> dict[str, Any]:
    params = {"channel": channel, "channel_user_id": user}
    row = (await connection.execute(_USER, params)).first()
    if row is None:
        raise NotFound(f"no user {user!r} on channel {channel!r}")
    return _row(row)


async def _conversations(connection: AsyncConnection, user_id: uuid.UUID) -> list[dict[str, Any]]:
    return [_row(r) for r in await connection.execute(_CONVERSATIONS, {"user_id": user_id})]


def context_item(raw: bytes | str) -> dict[str, Any]:
    try:
        item = decode_context(raw)
    except (ValueError, KeyError, TypeError):
        return {"unreadable": as_text(raw)}
    return {"role": item.role, "content": item.content, "timestamp": item.timestamp}


def ttl_or_none(seconds: int) -> int | None:
    return seconds if seconds >= 0 else None  # -1: no expiry, -2: gone meanwhile


async def cached_user(
    redis: Redis, keys: Keys, user: dict[str, Any], conversations: Sequence[uuid.UUID]
) -> dict[str, Any]:
    """The user's session (with TTL), rate counter, last activity and cached contexts."""
    channel, member = user["channel_type"], user["channel_user_id"]
    session, rate = keys.session(channel, member), keys.rate(user["id"])
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(session)
        pipe.ttl(session)
        pipe.get(rate)
        pipe.ttl(rate)
        pipe.zscore(keys.active(channel), member)
        for conversation in conversations:
            pipe.lrange(keys.context(conversation), 0, -1)
        fields, session_ttl, count, rate_ttl, seen, *contexts = await pipe.execute()
    return {
        "session": {
            "key": session,
            "fields": {as_text(k): as_text(v) for k, v in fields.items()},
            "ttl_seconds": ttl_or_none(session_ttl),
        }
        if fields
        else None,
        "rate": {"key": rate, "count": int(count), "ttl_seconds": ttl_or_none(rate_ttl)}
        if count is not None
        else None,
        "active_last_seen": datetime.fromtimestamp(seen, UTC) if seen is not None else None,
        "contexts": {
            str(conversation): [context_item(item) for item in items]
            for conversation, items in zip(conversations, contexts, strict=True)
            if items
        },
    }


async def show_user(
    engine: AsyncEngine, redis: Redis, keys: Keys, channel: str, user: str
) -> dict[str, Any]:
    async with engine.connect() as connection:
        row = await _find_user(connection, channel, user)
        conversations = await _conversations(connection, row["id"])
    cache = await cached_user(redis, keys, row, [c["id"] for c in conversations])
    contexts = cache.pop("contexts")
    for conversation in conversations:
        conversation["cached_context"] = len(contexts.get(str(conversation["id"]), []))
    return {"user": row, "cache": cache, "conversations": conversations}


async def export_user(
    engine: AsyncEngine, redis: Redis, keys: Keys, channel: str, user: str, progress: Progress
) -> dict[str, Any]:
    """Everything stored about the user, in both stores, as one JSON-ready object."""
    async with engine.connect() as connection:
        # One snapshot: messages arriving meanwhile are either all in or all out.
        await connection.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
        await connection.begin()
        row = await _find_user(connection, channel, user)
        conversations = await _conversations(connection, row["id"])
        for conversation in conversations:
            params = {"conversation_id": conversation["id"]}
            found = await connection.execute(_ALL_MESSAGES, params)
            conversation["messages"] = [_row(message) for message in found]
            progress(1)
    cache = await cached_user(redis, keys, row, [c["id"] for c in conversations])
    return {
        "exported_at": datetime.now(UTC),
        "user": row,
        "conversations": conversations,
        "redis": cache,
    }


async def user_summary(engine: AsyncEngine, channel: str, user: str) -> dict[str, Any]:
    """What a delete would remove from Postgres: for the confirmation prompt."""
    async with engine.connect() as connection:
        row = await _find_user(connection, channel, user)
        conversations = await _conversations(connection, row["id"])
    messages = sum(int(c["messages"]) for c in conversations)
    return {"user": row, "conversations": len(conversations), "messages": messages}


async def delete_user(
    engine: AsyncEngine, redis: Redis, keys: Keys, channel: str, user: str
) -> dict[str, Any]:
    """Erase the user: their row with its conversations and messages (ON DELETE CASCADE),
    then every Redis key about them. Postgres first: it is the record."""
    await redis.ping()  # both stores must be reachable before anything is erased
    async with engine.begin() as connection:
        row = await _find_user(connection, channel, user)
        await connection.execute(_LOCK_USER, {"id": row["id"]})
        conversations = await _conversations(connection, row["id"])
        await connection.execute(_DELETE_USER, {"id": row["id"]})
    ids = [c["id"] for c in conversations]
    return {
        "user": {"id": row["id"], "channel_type": channel, "channel_user_id": user},
        "postgres": {
            "users": 1,
            "conversations": len(conversations),
            "messages": sum(int(c["messages"]) for c in conversations),
        },
        "redis": await _delete_user_keys(redis, keys, row, ids),
    }


async def _delete_user_keys(
    redis: Redis, keys: Keys, user: dict[str, Any], conversations: list[uuid.UUID]
) -> dict[str, int]:
    """Session, rate counter, each conversation's context, and the user's entry in the
    channel's active set. Dedup keys stay: they hold a platform event id and 'done', no
    personal data, and keep a redelivered event from being stored again. Lock keys stay:
    they expire within LOCK_TTL_SECONDS and order a message still in flight."""
    channel, member = user["channel_type"], user["channel_user_id"]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.unlink(keys.session(channel, member))
        pipe.unlink(keys.rate(user["id"]))
        pipe.zrem(keys.active(channel), member)
        for conversation in conversations:
            pipe.unlink(keys.context(conversation))
        session, rate, active, *contexts = await pipe.execute()
    return {"session": session, "rate": rate, "active": active, "context": sum(contexts)}
