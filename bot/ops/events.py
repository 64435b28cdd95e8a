"""What `bot ops event` reads: one platform event's claim in Redis (its EventState,
bot/cache/events.py) beside what Postgres stored for it, and what the two say together."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from bot.cache.admin import CachedEvent
from bot.ops.context import Ops
from bot.store.records import StoredEvent
from bot.validation import storable_event_id

NO_CLAIM_STORED = (
    "stored, and Redis holds no claim (flushed, expired, or lost with Redis): a "
    "redelivery is recognised by Postgres's unique key and stored once"
)
NO_CLAIM_NOT_STORED = "not stored: never handled, or its handling stored nothing"
UNREADABLE = "Redis holds a value no version of the bot writes"


async def show_event(ops: Ops, channel: str, event: str) -> dict[str, Any]:
    stored_as = storable_event_id(event) or event  # as the service stores it
    cached = await ops.cache.event(channel, stored_as)
    stored = await ops.store.records.event(channel, stored_as)
    return {
        "channel": channel,
        "event": event,
        "stored_as": stored_as,
        "redis": _claim(cached),
        "postgres": asdict(stored) if stored else None,
        "meaning": meaning(cached, stored),
    }


def _claim(cached: CachedEvent) -> dict[str, Any]:
    claim = cached.claim
    at = claim.answered_at if claim else None
    return {
        "key": cached.key,
        "value": cached.raw,
        "state": claim.state.value if claim else None,
        "answered_at": datetime.fromtimestamp(at, UTC) if at is not None else None,
        "ttl_seconds": cached.ttl,
    }


def meaning(cached: CachedEvent, stored: StoredEvent | None) -> str:
    if cached.claim is not None:
        return cached.claim.state.meaning
    if cached.raw is not None:
        return UNREADABLE
    return NO_CLAIM_STORED if stored else NO_CLAIM_NOT_STORED
