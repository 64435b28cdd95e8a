"""Cache flush and warm, and retention: the work behind `bot ops cache …` and `bot ops purge`.

Redis keys are named only by Keys and touched only under this deployment's prefix;
all SQL is in the store. Long runs report progress through a callback.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.cache import keys as kinds
from bot.cache.hotstate import encode_context
from bot.cache.keys import Keys
from bot.store.manage_queries import WarmSession
from bot.store.queries import Store

Progress = Callable[[int], None]  # called with how many items were just done

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# Kinds a flush deletes; `lock` keys are left alone: they order messages in flight
# and expire by themselves within LOCK_TTL_SECONDS.
FLUSHED_KINDS = (
    kinds.SESSION,
    kinds.RATE,
    kinds.ACTIVE,
    kinds.CONTEXT,
    kinds.CHANNEL_CONFIG,
    kinds.FEATURES,
    kinds.DEDUP,
    kinds.STATS,
)

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


class BadInput(ValueError):
    """An argument an operator gave is not valid; the message says what is."""


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s`, `2w` as a positive timedelta."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise BadInput(
            f"{text!r} is not a duration; use a positive number and a unit: "
            "s, m, h, d or w (e.g. 90d, 1h)"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


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
    kept_locks: int = 0


async def flush_all(redis: Redis, keys: Keys, batch: int, progress: Progress) -> FlushAll:
    """Every key of this deployment (SCAN under its prefix) except the locks in flight."""
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
        if kind == kinds.LOCK:
            result.kept_locks += 1
        elif kind in FLUSHED_KINDS:  # with an empty prefix, other deployments' keys differ
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
    redis: Redis, keys: Keys, store: Store, since: datetime, batch: int, progress: Progress
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


async def purge(
    store: Store,
    redis: Redis | None,
    keys: Keys,
    cutoff: datetime,
    batch: int,
    progress: Progress,
) -> PurgeResult:
    """Delete messages older than `cutoff`, in batches of one short transaction each,
    then inactive conversations left empty; drop the Redis contexts they leave stale.

    `redis` None: Redis is unreachable; Postgres is purged anyway (contexts: None).
    """
    started = time.monotonic()
    result = PurgeResult(cutoff, dry_run=False, contexts=0 if redis else None)
    for table in ("messages", "conversations"):
        delete = store.purge_messages if table == "messages" else store.purge_conversations
        while True:
            touched = await delete(cutoff, batch)
            setattr(result, table, getattr(result, table) + len(touched))
            if touched and redis is not None and result.contexts is not None:
                try:
                    dropped = await flush_keys(redis, map(keys.context, set(touched)), keys)
                    result.contexts += dropped[kinds.CONTEXT]
                except (RedisError, OSError):
                    result.contexts = None  # Redis went away: the rest expire by their TTL
            progress(len(touched))
            if len(touched) < batch:
                break
    result.seconds = time.monotonic() - started
    return result


async def purge_dry_run(
    store: Store, redis: Redis | None, keys: Keys, cutoff: datetime, batch: int
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
