"""What `bot ops health` and `bot ops stats` read, without changing anything.

The SQL is in the store (bot/store/monitoring.py); every Redis read is the cache
admin's (bot/cache/admin.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from bot.cache import keys as kinds
from bot.cache.admin import CacheAdmin, Progress
from bot.errors import CacheUnavailable, StoreError
from bot.ops.handler import describe
from bot.store.migrate import head_revision, known_revisions
from bot.store.records import MessageCounts
from bot.store.store import Store
from bot.tallies import CacheRead, Tally

PINGS = 3
INBOX_WAIT_WARNING_SECONDS = 300.0  # an inbox message older than this is worth a look
SCAN_BATCH = 1000
# What a health check may meet: our errors, or its own time budget running out.
FAILURES = (StoreError, CacheUnavailable, TimeoutError)

_REDIS_FIELDS = (
    *("latency_ms", "version", "used_memory", "used_memory_human"),
    *("maxmemory", "maxmemory_policy", "evicted_keys", "problem"),
)


async def _median_ms(ping: Callable[[], Awaitable[object]]) -> float:
    """Median round trip of a few pings, in ms, after one that may open the connection."""
    await ping()
    times = []
    for _ in range(PINGS):
        start = time.perf_counter()
        await ping()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


# --- health ---------------------------------------------------------------------------


async def postgres_health(store: Store, budget: float, secrets: list[str]) -> dict[str, Any]:
    try:
        async with asyncio.timeout(budget), store.monitoring.probe() as probe:
            latency = await _median_ms(probe.ping)
            version = await probe.server_version()
        revision = await asyncio.wait_for(store.monitoring.schema_revision(), budget)
    except FAILURES as exc:
        failed = {"ok": False, "error": describe(exc, secrets), "latency_ms": None}
        return {**failed, "version": None, "revision": None}
    return {
        "ok": True,
        "error": None,
        "latency_ms": latency,
        "version": version,
        "revision": revision,
    }


def migration_status(current: str | None, reachable: bool) -> dict[str, Any]:
    head = head_revision()
    if not reachable:
        status = "unknown"  # Postgres is down
    elif current == head:
        status = "current"
    elif current is None or current in known_revisions():
        status = "behind"  # run `bot migrate` (workers do it when they start)
    else:
        status = "ahead"  # a revision this code does not know: a newer release migrated
    return {"ok": status == "current", "current": current, "head": head, "status": status}


async def redis_health(cache: CacheAdmin, budget: float, secrets: list[str]) -> dict[str, Any]:
    try:
        async with asyncio.timeout(budget):
            server = await cache.server()
    except FAILURES as exc:
        failed: dict[str, Any] = dict.fromkeys(_REDIS_FIELDS)
        return {**failed, "ok": False, "error": describe(exc, secrets)}
    # A Redis that answers but that the bot cannot run on is not healthy.
    return {"ok": server.problem is None, "error": server.problem, **asdict(server)}


def health_warnings(redis: dict[str, Any]) -> list[str]:
    """Not failures, but what an operator should know about Redis memory."""
    if not redis.get("ok"):
        return []
    if not redis.get("maxmemory"):
        return ["Redis has no maxmemory: it may grow until the host runs out of memory"]
    policy = redis.get("maxmemory_policy") or ""
    if policy == "noeviction":
        return ["Redis maxmemory-policy is noeviction: when full it refuses writes"]
    if policy.startswith("allkeys-") and redis.get("evicted_keys"):
        return [
            f"Redis has evicted {redis['evicted_keys']} keys under {policy}: answers slow "
            "down and some are asked of the LLM twice (Postgres keeps them in order); "
            "give Redis more memory (docs/deployment.md, Redis memory)"
        ]
    return []


async def health(
    store: Store,
    cache: CacheAdmin,
    budget: float,
    secrets: list[str],
    replica: Replica | None = None,
) -> dict[str, Any]:
    """Both stores reachable, their round trips, the schema revision, Redis memory, and
    the read replica (DATABASE_READ_URL) if there is one: reachable, in recovery, lag."""
    postgres, redis, read, inbox = await asyncio.gather(
        postgres_health(store, budget, secrets),
        redis_health(cache, budget, secrets),
        replica_health(store, replica, budget, secrets),
        inbox_health(store, budget, secrets),
    )
    migrations = migration_status(postgres.pop("revision"), postgres["ok"])
    replica_ok = read is None or read["ok"]
    return {
        "ok": bool(postgres["ok"] and redis["ok"] and migrations["ok"] and replica_ok),
        "postgres": postgres,
        "redis": redis,
        "migrations": migrations,
        **({"replica": read} if read is not None else {}),
        "inbox": inbox,
        "warnings": [
            *health_warnings(redis),
            *replica_warnings(read, replica),
            *inbox_warnings(inbox),
        ],
    }


async def inbox_health(store: Store, budget: float, secrets: list[str]) -> dict[str, Any]:
    """The messages in the inbox (bot/inbox.py): all, those no worker holds, the oldest's
    age; None of each, and why, when it cannot be read."""
    try:
        summary = await asyncio.wait_for(store.inbox.summary(), budget)
    except FAILURES as exc:
        unknown = {"pending": None, "waiting": None, "oldest_seconds": None}
        return {**unknown, "error": describe(exc, secrets)}
    return {**asdict(summary), "error": None}


def inbox_warnings(inbox: dict[str, Any]) -> list[str]:
    """Messages that have waited long for an answer: no worker runs for their channel,
    or the LLM has failed for as long."""
    oldest = inbox["oldest_seconds"]
    if not inbox["waiting"] or oldest is None or oldest < INBOX_WAIT_WARNING_SECONDS:
        return []
    return [
        f"the inbox holds {inbox['pending']} unanswered messages, {inbox['waiting']} of them "
        f"held by no worker, the oldest {oldest:.0f} s old: is a worker running for their "
        "channel, and is the LLM answering? (docs/reliability.md, the inbox)"
    ]


@dataclass(frozen=True, slots=True)
class Replica:
    """The read replica's store, and the replay lag above which health warns."""

    store: Store
    lag_warning_seconds: float


async def replica_health(
    primary: Store, replica: Replica | None, budget: float, secrets: list[str]
) -> dict[str, Any] | None:
    """Reachable, in recovery, and how far its replay is behind the primary: in bytes of
    WAL, and in seconds since the last transaction it replayed (0 when it has replayed
    all the primary has written, however long ago that was)."""
    if replica is None:
        return None
    found = await postgres_health(replica.store, budget, secrets)
    found.pop("revision")
    lag: dict[str, Any] = {"in_recovery": None, "lag_bytes": None, "lag_seconds": None}
    if not found["ok"]:
        return {**found, **lag}
    try:
        async with asyncio.timeout(budget):
            # The primary's position first: a replica that replays past it meanwhile is not
            # behind, where the other order would count what was written in between.
            position = await _primary_position(primary)
            status = await replica.store.monitoring.replica_status(position)
    except FAILURES as exc:
        return {**found, **lag, "ok": False, "error": describe(exc, secrets)}
    behind = status.lag_bytes
    seconds = 0.0 if behind == 0 else status.since_last_replay
    lag = {"in_recovery": status.in_recovery, "lag_bytes": behind, "lag_seconds": seconds}
    return {**found, **lag}


async def _primary_position(primary: Store) -> str | None:
    """The primary's WAL position; None if it cannot be read (the lag is then unknown)."""
    try:
        return await primary.monitoring.wal_position()
    except StoreError:
        return None


def replica_warnings(read: dict[str, Any] | None, replica: Replica | None) -> list[str]:
    """A replica that is no standby, or whose replay lags beyond the threshold."""
    if read is None or replica is None or not read["ok"]:
        return []
    if read["in_recovery"] is False:
        return [
            "DATABASE_READ_URL names a server that is not in recovery (a primary, or a "
            "promoted standby): ops reads load it as they would the primary"
        ]
    seconds, limit = read["lag_seconds"], replica.lag_warning_seconds
    if seconds is not None and seconds > limit:
        return [
            f"the read replica is {seconds:.1f} s ({read['lag_bytes']} bytes of WAL) behind "
            f"the primary, over REPLICA_LAG_WARNING_SECONDS={limit:g}: ops stats, search, "
            "export and conversation show miss what was written since"
        ]
    return []


# --- stats: Redis ---------------------------------------------------------------------


def counters(values: dict[str, int]) -> dict[str, Any] | None:
    """The service's tallies summed over every worker, if the workers publish them."""
    if not values:
        return None
    cache = {}
    for read in CacheRead:
        hits, misses = values.get(read.tally(True), 0), values.get(read.tally(False), 0)
        ratio = round(hits / (hits + misses), 4) if hits + misses else None
        cache[read.value] = {"hits": hits, "misses": misses, "ratio": ratio}
    return {
        "rate_limited": values.get(Tally.RATE_LIMITED, 0),
        "duplicate": values.get(Tally.DUPLICATE, 0),
        "cache": cache,
        "all": dict(sorted(values.items())),
    }


async def redis_stats(cache: CacheAdmin, progress: Progress) -> dict[str, Any]:
    counts, active = await cache.key_kinds(progress, SCAN_BATCH)
    memory = await cache.memory()
    return {
        "active_users": {
            "window_seconds": cache.keys.active_window,
            "by_channel": await cache.active_users(active),
        },
        "live_sessions": counts.get(kinds.SESSION, 0),
        "counters": counters(await cache.counters()),
        "redis": {
            "used_memory": memory.get("used_memory"),
            "used_memory_human": memory.get("used_memory_human"),
            "keys_by_kind": dict(sorted(counts.items())),
        },
    }


# --- stats: Postgres ------------------------------------------------------------------


def _counts(name: str, row: MessageCounts) -> dict[str, Any]:
    return {name: row.value, "last_hour": row.last_hour, "last_24h": row.last_24h}


async def postgres_stats(store: Store, reads: Store) -> dict[str, Any]:
    """What the rows say, from `reads` (a replica, if there is one), and the tables' and
    indexes' sizes and use from `store`: a standby keeps its own statistics."""
    activity = await reads.monitoring.activity()
    usage = await store.monitoring.usage()
    return {
        "conversations": asdict(activity.conversations),
        "messages": {
            "by_channel": [_counts("channel", row) for row in activity.messages_by_channel],
            "replies_by_model": [_counts("model", row) for row in activity.replies_by_model],
        },
        "postgres": {
            "tables": [asdict(row) for row in usage.tables],
            "indexes": [asdict(row) for row in usage.indexes],
        },
    }
