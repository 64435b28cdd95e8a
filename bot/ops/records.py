"""What `bot ops user …` reads (and, for delete, erases).

Postgres rows are the record (store.records); the Redis side is what is cached about
the same user (the cache admin), found by the key names of Keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

from bot.cache.admin import CachedSession, CachedUser, Progress
from bot.cache.codec import decode_context, text_of
from bot.errors import NotFound
from bot.ops.context import Ops
from bot.store.records import (
    ConversationSummary,
    ExportedConversation,
    UserConversations,
    UserExport,
    UserRow,
)

Found = TypeVar("Found", UserConversations, UserExport)


def _found(found: Found | None, channel: str, user: str) -> Found:
    if found is None:
        raise NotFound(f"no user {user!r} on channel {channel!r}")
    return found


def context_item(raw: bytes | str) -> dict[str, Any]:
    try:
        item = decode_context(raw)
    except (ValueError, KeyError, TypeError):
        return {"unreadable": text_of(raw)}
    return {"role": item.role, "content": item.content, "timestamp": item.timestamp}


async def cached_user(
    ops: Ops, user: UserRow, conversations: Sequence[ConversationSummary]
) -> dict[str, Any]:
    """The user's sessions with their TTL (the DM's under "session", the other scopes'
    under "scoped_sessions"), rate counter, last activity and cached contexts."""
    # A shared conversation's session is the chat's, not the user's: only its context.
    ids, scopes = [c.id for c in conversations], [c.scope for c in conversations if not c.shared]
    cached = await ops.cache.user(user.channel_type, user.channel_user_id, user.id, ids, scopes)
    return _cache_report(cached)


def _session(session: CachedSession) -> dict[str, Any] | None:
    if not session.fields:
        return None
    fields = {"key": session.key, "fields": session.fields, "ttl_seconds": session.ttl}
    return {"scope": session.scope, **fields}


def _cache_report(cached: CachedUser) -> dict[str, Any]:
    dm, *others = cached.sessions
    rate = {"key": cached.rate_key, "count": cached.rate_count, "ttl_seconds": cached.rate_ttl}
    seen = cached.active_since
    return {
        "session": _session(dm),
        "scoped_sessions": [found for found in map(_session, others) if found],
        "rate": rate if cached.rate_count is not None else None,
        "active_last_seen": datetime.fromtimestamp(seen, UTC) if seen is not None else None,
        "contexts": {
            str(conversation): [context_item(item) for item in items]
            for conversation, items in cached.contexts.items()
        },
    }


async def show_user(ops: Ops, channel: str, user: str) -> dict[str, Any]:
    found = _found(await ops.store.records.user_with_conversations(channel, user), channel, user)
    cache = await cached_user(ops, found.user, found.conversations)
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


def _by_scope(items: Sequence[ExportedConversation]) -> list[dict[str, Any]]:
    """The conversations grouped by the place they happened, newest place first."""
    scopes: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        scopes.setdefault(item.conversation.scope, []).append(_exported(item))
    return [{"scope": scope, "conversations": found} for scope, found in scopes.items()]


async def export_user(ops: Ops, channel: str, user: str, progress: Progress) -> dict[str, Any]:
    """Everything stored about the user, in both stores, as one JSON-ready object: their
    messages grouped by scope (of shared conversations, what they wrote)."""
    found = _found(await ops.reads.records.export_user(channel, user, progress), channel, user)
    summaries = [item.conversation for item in found.conversations]
    return {
        "exported_at": datetime.now(UTC),
        "user": asdict(found.user),
        "scopes": _by_scope(found.conversations),
        "redis": await cached_user(ops, found.user, summaries),
    }


async def user_summary(
    ops: Ops, channel: str, user: str, *, on_replica: bool = False
) -> dict[str, Any]:
    """What a delete would remove from Postgres: for the confirmation prompt (from the
    primary), and the export's progress (`on_replica`, where the export reads). Of a
    shared conversation, only what the user wrote goes."""
    store = ops.reads if on_replica else ops.store
    found = _found(await store.records.user_with_conversations(channel, user), channel, user)
    return {
        "user": asdict(found.user),
        "conversations": len(found.conversations),
        "shared": sum(c.shared for c in found.conversations),
        "messages": found.messages,
    }


async def delete_preview(ops: Ops, channel: str, user: str) -> dict[str, Any]:
    """What `delete_user` would erase, counted, changing nothing: for --dry-run and the
    question asked before. Redis: the keys of the user that exist, by kind."""
    found = _found(await ops.store.records.user_with_conversations(channel, user), channel, user)
    conversations, row = found.conversations, found.user
    ids, scopes = [c.id for c in conversations], [c.scope for c in conversations if not c.shared]
    names = ops.cache.user_keys(channel, user, row.id, ids, scopes)
    return {
        "dry_run": True,
        "user": {"id": row.id, "channel_type": channel, "channel_user_id": user},
        "postgres": {
            "users": 1,
            "conversations": sum(not c.shared for c in conversations),
            "messages": found.messages,
        },
        "redis": dict(sorted((await ops.cache.existing(names)).items())),
    }


async def delete_user(ops: Ops, channel: str, user: str) -> dict[str, Any]:
    """Erase the user: their row, and with it (the foreign keys cascade) their
    conversations and messages, then every Redis key about them. Postgres first: it is
    the record; but both stores must be reachable before anything is erased."""
    await ops.cache.ping()
    found = _found(await ops.store.records.delete_user(channel, user), channel, user)
    conversations = found.conversations
    ids, scopes = [c.id for c in conversations], [c.scope for c in conversations if not c.shared]
    row = found.user
    return {
        "user": {"id": row.id, "channel_type": channel, "channel_user_id": user},
        "postgres": {
            "users": 1,
            "conversations": sum(not c.shared for c in conversations),
            "messages": found.messages,  # their own, and what they wrote in shared ones
        },
        "redis": await ops.cache.delete_user(channel, user, row.id, ids, scopes),
    }
