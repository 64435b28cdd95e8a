"""Cache flush and warm, and retention: the work behind `bot ops cache …` and `bot ops purge`.

All SQL is in the store (store.housekeeping), every Redis call the cache admin's; long
runs report progress through a callback.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.cache.admin import CacheAdmin, Progress
from bot.errors import CacheUnavailable
from bot.store.housekeeping import HousekeepingQueries, PurgeCounts

# A purge retries rows another transaction holds locked (SKIP LOCKED passed them
# over) after pauses growing from the first to the longest, within its lock wait.
LOCKED_PAUSE_FIRST = 0.05
LOCKED_PAUSE_LONGEST = 1.0


def cutoff_before(duration: timedelta, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - duration


# --- warm -----------------------------------------------------------------------------


@dataclass(slots=True)
class WarmResult:
    users: int = 0
    sessions_filled: int = 0
    contexts_filled: int = 0


async def warm(
    cache: CacheAdmin,
    store: HousekeepingQueries,
    since: datetime,
    batch: int,
    progress: Progress,
) -> WarmResult:
    """Refill sessions and contexts of users active since `since`, from Postgres."""
    result = WarmResult()
    after: uuid.UUID | None = None
    while page := await store.active_sessions(since, after, batch, cache.keys.context_messages):
        sessions, contexts = await cache.warm(page)
        result.sessions_filled += sessions
        result.contexts_filled += contexts
        result.users += len(page)
        progress(len(page))
        after = page[-1].session.conversation_id
    return result


# --- purge ----------------------------------------------------------------------------


@dataclass(slots=True)
class PurgeResult:
    cutoff: datetime
    dry_run: bool
    messages: int = 0
    conversations: int = 0
    contexts: int | None = 0  # Redis context keys dropped (or that would be); None: unknown
    seconds: float = 0.0
    # Rows still past the cutoff but held locked by other transactions when the lock
    # wait ran out: left for the next purge.
    skipped: dict[str, int] = field(default_factory=dict)


Touched = Callable[[list[uuid.UUID]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _PurgeTable:
    """One table's purge: a batch deleted, and how many rows the purge still matches."""

    store: HousekeepingQueries
    name: str  # "messages" or "conversations", as in PurgeCounts
    cutoff: datetime
    batch: int

    async def delete(self) -> list[uuid.UUID]:
        store = self.store
        delete = store.purge_messages if self.name == "messages" else store.purge_conversations
        return await delete(self.cutoff, self.batch)

    async def left(self) -> int:
        counts: PurgeCounts = await self.store.count_purge_matches(self.cutoff)
        return int(getattr(counts, self.name))


async def purge(
    store: HousekeepingQueries,
    cache: CacheAdmin | None,
    cutoff: datetime,
    batch: int,
    progress: Progress,
    lock_wait: float = 5.0,
) -> PurgeResult:
    """Delete messages older than `cutoff`, in batches of one short transaction each,
    then inactive conversations left empty; drop the Redis contexts they leave stale.

    Rows another transaction holds locked are retried for up to `lock_wait` seconds,
    then reported as skipped. `cache` None: Redis is unreachable; Postgres is purged
    anyway (contexts: None).
    """
    started = time.monotonic()
    result = PurgeResult(cutoff, dry_run=False, contexts=0 if cache else None)

    async def touched(ids: list[uuid.UUID]) -> None:
        progress(len(ids))
        if ids and cache is not None and result.contexts is not None:
            try:
                result.contexts += await cache.drop_contexts(ids)
            except CacheUnavailable:
                result.contexts = None  # Redis went away: the rest expire by their TTL

    for name in ("messages", "conversations"):
        table = _PurgeTable(store, name, cutoff, batch)
        deleted, skipped = await _purge_table(table, lock_wait, touched)
        setattr(result, name, deleted)
        if skipped:
            result.skipped[name] = skipped
    result.seconds = time.monotonic() - started
    return result


async def _purge_table(table: _PurgeTable, lock_wait: float, touched: Touched) -> tuple[int, int]:
    """Delete batch after batch until a batch comes back short and no row matches any
    more. A short batch with rows still matching means SKIP LOCKED passed over rows
    another transaction holds: wait a little and try again, within `lock_wait`.
    Returns (rows deleted, rows still matching when the wait ran out)."""
    deleted, waited, pause = 0, 0.0, LOCKED_PAUSE_FIRST
    while True:
        ids = await table.delete()
        deleted += len(ids)
        await touched(ids)
        if len(ids) == table.batch:
            continue
        remaining = await table.left()
        if not remaining:
            return deleted, 0
        if ids:
            continue  # progress: go on at once, locked rows come back in a later batch
        if waited >= lock_wait:
            return deleted, remaining
        step = min(pause, lock_wait - waited)
        await asyncio.sleep(step)
        waited += step
        pause = min(pause * 2, LOCKED_PAUSE_LONGEST)


async def purge_dry_run(
    store: HousekeepingQueries, cache: CacheAdmin | None, cutoff: datetime, batch: int
) -> PurgeResult:
    """What `purge` would remove, counted without changing anything."""
    started = time.monotonic()
    counts = await store.count_purgeable(cutoff)
    result = PurgeResult(cutoff, True, counts.messages, counts.conversations, None)
    if cache is not None:
        result.contexts = 0
        after: uuid.UUID | None = None
        while page := await store.purgeable_conversations(cutoff, after, batch):
            result.contexts += await cache.contexts_cached(page)
            after = page[-1]
    result.seconds = time.monotonic() - started
    return result
