"""Cache flush and warm, and retention: the work behind `bot ops cache …` and `bot ops purge`.

Redis keys are named only by Keys and touched only under this deployment's prefix;
all SQL is in the store. Long runs report progress through a callback.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.cache import keys as kinds
from bot.cache.codec import encode_context
from bot.cache.keys import Keys
from bot.ops.inspect import KNOWN_KINDS
from bot.store.housekeeping import HousekeepingQueries, PurgeCounts, WarmSession

Progress = Callable[[int], None]  # called with how many items were just done

# What `cache flush --all` deletes: copies of Postgres rows and state the next message
# rebuilds. STATE_KINDS only with --include-state: rate counters (a user could exceed
# the limit for a minute), dedup markers (a redelivered event would be stored again)
# and the workers' stats counters (the totals restart). `lock` keys are never
# deleted: they order messages in flight and expire within LOCK_TTL_SECONDS.
CACHE_KINDS = (
    kinds.SESSION,
    kinds.CONTEXT,
    kinds.CHANNEL_CONFIG,
    kinds.FEATURES,
    kinds.ACTIVE,
)
STATE_KINDS = (kinds.RATE, kinds.DEDUP, kinds.STATS)
# A purge retries rows another transaction holds locked (SKIP LOCKED passed them
# over) after pauses growing from the first to the longest, within its lock wait.
LOCKED_PAUSE_FIRST = 0.05
LOCKED_PAUSE_LONGEST = 1.0

# Fill a user's session and context only where absent, so a live worker's fresher
# state is never overwritten. KEYS: session, context. ARGV: session ttl, context ttl,
# user_id, conversation_id, model, last_activity, then context items newest first.
# Returns {session filled (0/1), context filled (0/1)}.
WARM = r"""
local session, context = 0, 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'user_id', ARGV[3], 'conversation_id', ARGV[4],
             'model', ARGV[5], 'last_activity', ARGV[6])
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  session = 1
end
if #ARGV > 6 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 7))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  context = 1
end
return {session, context}
"""


def cutoff_before(duration: timedelta, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - duration


# --- flush ----------------------------------------------------------------------------


async def flush_keys(redis: Redis, names: Iterable[str], keys: Keys) -> Counter[str]:
    """Delete the named keys; how many existed, by kind."""
    names = list(dict.fromkeys(names))
    if not names:
        return Counter()
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.unlink(name)
        deleted = await pipe.execute()
    found: Counter[str] = Counter({keys.kind_of(name): 0 for name in names})
    for name, count in zip(names, deleted, strict=True):
        found[keys.kind_of(name)] += int(count)
    return found


def user_keys(
    keys: Keys,
    channel: str,
    channel_user_id: str,
    user_id: uuid.UUID,
    conversations: Iterable[uuid.UUID],
) -> list[str]:
    """The session, rate counter and every conversation context of one user."""
    return [
        keys.session(channel, channel_user_id),
        keys.rate(user_id),
        *(keys.context(conversation) for conversation in conversations),
    ]


@dataclass(slots=True)
class FlushAll:
    deleted: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)  # keys of this deployment left, by kind


async def flush_all(
    redis: Redis, keys: Keys, batch: int, progress: Progress, include_state: bool = False
) -> FlushAll:
    """The cached keys of this deployment (SCAN under its prefix): CACHE_KINDS, and
    STATE_KINDS too with `include_state`; every other key is counted as kept, by kind
    (keys of no kind the bot knows as `other`)."""
    flushed = frozenset(CACHE_KINDS + STATE_KINDS if include_state else CACHE_KINDS)
    result = FlushAll()
    pending: list[str] = []

    async def delete() -> None:
        deleted = await flush_keys(redis, pending, keys)
        result.deleted.update(deleted)
        progress(len(pending))
        pending.clear()

    async for raw in redis.scan_iter(match=keys.all_pattern(), count=batch):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        kind = keys.kind_of(name)
        if kind not in flushed:  # with an empty prefix, other applications' keys too
            result.kept[kind if kind in KNOWN_KINDS else "other"] += 1
            continue
        pending.append(name)
        if len(pending) >= batch:
            await delete()
    if pending:
        await delete()
    return result


# --- warm -----------------------------------------------------------------------------


@dataclass(slots=True)
class WarmResult:
    users: int = 0
    sessions_filled: int = 0
    contexts_filled: int = 0


async def warm(
    redis: Redis,
    keys: Keys,
    store: HousekeepingQueries,
    since: datetime,
    batch: int,
    progress: Progress,
) -> WarmResult:
    """Refill sessions and contexts of users active since `since`, from Postgres."""
    script = redis.register_script(WARM)
    result = WarmResult()
    after: uuid.UUID | None = None
    while True:
        page = await store.active_sessions(since, after, batch, keys.context_messages)
        if not page:
            return result
        async with redis.pipeline(transaction=False) as pipe:
            for item in page:
                key_list, args = _warm_call(keys, item)
                await script(keys=key_list, args=args, client=pipe)
            filled = await pipe.execute()
        for session, context in filled:
            result.sessions_filled += int(session)
            result.contexts_filled += int(context)
        result.users += len(page)
        progress(len(page))
        after = page[-1].session.conversation_id


def _warm_call(keys: Keys, item: WarmSession) -> tuple[list[str], list[Any]]:
    session = item.session
    key_list = [
        keys.session(item.channel, item.channel_user_id),
        keys.context(session.conversation_id),
    ]
    args: list[Any] = [
        keys.session_ttl,
        keys.context_ttl,
        str(session.user_id),
        str(session.conversation_id),
        session.model or "",
        f"{item.last_activity.timestamp():.3f}",
        *(encode_context(message) for message in item.context),
    ]
    return key_list, args


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
    redis: Redis | None,
    keys: Keys,
    cutoff: datetime,
    batch: int,
    progress: Progress,
    lock_wait: float = 5.0,
) -> PurgeResult:
    """Delete messages older than `cutoff`, in batches of one short transaction each,
    then inactive conversations left empty; drop the Redis contexts they leave stale.

    Rows another transaction holds locked are retried for up to `lock_wait` seconds,
    then reported as skipped. `redis` None: Redis is unreachable; Postgres is purged
    anyway (contexts: None).
    """
    started = time.monotonic()
    result = PurgeResult(cutoff, dry_run=False, contexts=0 if redis else None)

    async def touched(ids: list[uuid.UUID]) -> None:
        progress(len(ids))
        if ids and redis is not None and result.contexts is not None:
            try:
                dropped = await flush_keys(redis, map(keys.context, set(ids)), keys)
                result.contexts += dropped[kinds.CONTEXT]
            except (RedisError, OSError):
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
    store: HousekeepingQueries, redis: Redis | None, keys: Keys, cutoff: datetime, batch: int
) -> PurgeResult:
    """What `purge` would remove, counted without changing anything."""
    started = time.monotonic()
    counts = await store.count_purgeable(cutoff)
    result = PurgeResult(cutoff, True, counts.messages, counts.conversations, None)
    if redis is not None:
        result.contexts = 0
        after: uuid.UUID | None = None
        while page := await store.purgeable_conversations(cutoff, after, batch):
            async with redis.pipeline(transaction=False) as pipe:
                for conversation in page:
                    pipe.exists(keys.context(conversation))
                result.contexts += sum(int(found) for found in await pipe.execute())
            after = page[-1]
    result.seconds = time.monotonic() - started
    return result
