"""What `bot ops user …` and `bot ops conversation …` read (and, for delete, erase).

Postgres rows are the record; the Redis side is what is cached about the same user
or conversation, found by the key names of Keys (bot/cache/keys.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.asyncio import Redis

from bot.cache.codec import decode_context
from bot.cache.keys import Keys
from bot.errors import NotFound
from bot.ops.inspect import Progress, as_text
from bot.store.records import ExportedConversation, UserConversations, UserExport, UserRow
from bot.store.store import Store

Found = TypeVar("Found", UserConversations, UserExport)


def _found(found: Found | None, channel: str, user: str) -> Found:
    if found is None:
        raise NotFound(f"no user {user!r} on channel {channel!r}")
    return found


def context_item(raw: bytes | str) -> dict[str, Any]:
    try:
        item = decode_context(raw)
    except (ValueError, KeyError, TypeError):
        return {"unreadable": as_text(raw)}
    return {"role": item.role, "content": item.content, "timestamp": item.timestamp}


def ttl_or_none(seconds: int) -> int | None:
    return seconds if seconds >= 0 else None  # -1: no expiry, -2: gone meanwhile


async def cached_user(
    redis: Redis, keys: Keys, user: UserRow, conversations: Sequence[uuid.UUID]
) -> dict[str, Any]:
    """The user's session (with TTL), rate counter, last activity and cached contexts."""
    channel, member = user.channel_type, user.channel_user_id
    session, rate = keys.session(channel, member), keys.rate(user.id)
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
    store: Store, redis: Redis, keys: Keys, channel: str, user: str
) -> dict[str, Any]:
    found = _found(await store.records.user_with_conversations(channel, user), channel, user)
    cache = await cached_user(redis, keys, found.user, [c.id for c in found.conversations])
    contexts = cache.pop("contexts")
    conversations = [
        {**asdict(conversation), "cached_context": len(contexts.get(str(conversation.id), []))}
        for conversation in found.conversations
    ]
    return {"user": asdict(found.user), "cache": cache, "conversations": conversations}


def _exported(item: ExportedConversation) -> dict[str, Any]:
    """The conversation's row, its message count replaced by the messages themselves."""
    row = asdict(item.conversation)
    row["messages"] = [asdict(message) for message in item.messages]
    return row


async def export_user(
    store: Store, redis: Redis, keys: Keys, channel: str, user: str, progress: Progress
) -> dict[str, Any]:
    """Everything stored about the user, in both stores, as one JSON-ready object."""
    queries = store.records
    found = _found(await queries.export_user(channel, user, progress), channel, user)
    ids = [item.conversation.id for item in found.conversations]
    cache = await cached_user(redis, keys, found.user, ids)
    return {
        "exported_at": datetime.now(UTC),
        "user": asdict(found.user),
        "conversations": [_exported(item) for item in found.conversations],
        "redis": cache,
    }


async def user_summary(store: Store, channel: str, user: str) -> dict[str, Any]:
    """What a delete would remove from Postgres: for the confirmation prompt."""
    found = _found(await store.records.user_with_conversations(channel, user), channel, user)
    conversations = len(found.conversations)
    return {"user": asdict(found.user), "conversations": conversations, "messages": found.messages}


async def delete_user(
    store: Store, redis: Redis, keys: Keys, channel: str, user: str
) -> dict[str, Any]:
    """Erase the user: their row, and with it (the foreign keys cascade) their
    conversations and messages, then every Redis key about them. Postgres first: it is
    the record."""
    await redis.ping()  # both stores must be reachable before anything is erased
    found = _found(await store.records.delete_user(channel, user), channel, user)
    ids = [c.id for c in found.conversations]
    return {
        "user": {"id": found.user.id, "channel_type": channel, "channel_user_id": user},
        "postgres": {
            "users": 1,
            "conversations": len(found.conversations),
            "messages": found.messages,
        },
        "redis": await _delete_user_keys(redis, keys, found.user, ids),
    }


async def _delete_user_keys(
    redis: Redis, keys: Keys, user: UserRow, conversations: list[uuid.UUID]
) -> dict[str, int]:
    """Session, rate counter, each conversation's context, and the user's entry in the
    channel's active set. Dedup keys stay: they hold a platform event id and 'done', no
    personal data, and keep a redelivered event from being stored again. Lock keys stay:
    they expire within LOCK_TTL_SECONDS and order a message still in flight."""
    channel, member = user.channel_type, user.channel_user_id
    async with redis.pipeline(transaction=False) as pipe:
        pipe.unlink(keys.session(channel, member))
        pipe.unlink(keys.rate(user.id))
        pipe.zrem(keys.active(channel), member)
        for conversation in conversations:
            pipe.unlink(keys.context(conversation))
        session, rate, active, *contexts = await pipe.execute()
    return {"session": session, "rate": rate, "active": active, "context": sum(contexts)}
