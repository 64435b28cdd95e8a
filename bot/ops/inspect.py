"""What `bot ops health` and `bot ops stats` read, without changing anything.

The SQL is in the store (bot/store/monitoring.py); every Redis key name comes from
Keys (bot/cache/keys.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from typing import Any

from alembic.script import ScriptDirectory
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from bot.cache import keys as kinds
from bot.cache.keys import Keys
from bot.errors import StoreError
from bot.logs import redact
from bot.store.migrate import alembic_config, current_revision
from bot.store.records import MessageCounts
from bot.store.store import Store

Progress = Callable[[int], None]  # called with how many items were just done

PINGS = 3
SCAN_BATCH = 1000
CACHE_KINDS = (kinds.SESSION, kinds.CONTEXT, kinds.CHANNEL_CONFIG)
KNOWN_KINDS = frozenset(
    {
        *(kinds.SESSION, kinds.RATE, kinds.ACTIVE, kinds.CONTEXT, kinds.CHANNEL_CONFIG),
        *(kinds.FEATURES, kinds.DEDUP, kinds.LOCK, kinds.STATS),
    }
)
# OSError: a connection that failed before a driver wrapped the error (refused, no such
# host). A command's own file errors are mapped where they happen, never left to this.
STORE_ERRORS = (StoreError, SQLAlchemyError, RedisError, OSError, TimeoutError)

_REDIS_FIELDS = (
    *("latency_ms", "version", "used_memory", "used_memory_human"),
    *("maxmemory", "maxmemory_policy"),
)


def describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """One line about a store failure, with any password masked."""
    if isinstance(exc, StoreError) and exc.__cause__ is not None:
        exc = exc.__cause__  # the driver's error names what went wrong
    cause = getattr(exc, "orig", None) or exc
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    name = type(cause).__name__
    return redact(f"{name}: {detail}" if detail else name, secrets)


def as_text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


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
        revision = await asyncio.wait_for(current_revision(store.engine), budget)
    except STORE_ERRORS as exc:
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
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    known = {revision.revision for revision in script.walk_revisions()}
    if not reachable:
        status = "unknown"  # Postgres is down
    elif current == head:
        status = "current"
    elif current is None or current in known:
        status = "behind"  # run `bot migrate` (workers do it when they start)
    else:
        status = "ahead"  # a revision this code does not know: a newer release migrated
    return {"ok": status == "current", "current": current, "head": head, "status": status}


async def redis_health(redis: Redis, budget: float, secrets: list[str]) -> dict[str, Any]:
    try:
        async with asyncio.timeout(budget):
            latency = await _median_ms(redis.ping)
            memory = await redis.info("memory")
            server = await redis.info("server")
    except STORE_ERRORS as exc:
        failed: dict[str, Any] = dict.fromkeys(_REDIS_FIELDS)
        return {**failed, "ok": False, "error": describe(exc, secrets)}
    return {
        "ok": True,
        "error": None,
        "latency_ms": latency,
        "version": server.get("redis_version"),
        "used_memory": memory.get("used_memory"),
        "used_memory_human": memory.get("used_memory_human"),
        "maxmemory": memory.get("maxmemory"),
        "maxmemory_policy": memory.get("maxmemory_policy"),
    }


def health_warnings(redis: dict[str, Any]) -> list[str]:
    """Not failures, but what an operator should know about Redis memory."""
    if not redis.get("ok"):
        return []
    if not redis.get("maxmemory"):
        return ["Redis has no maxmemory: it may grow until the host runs out of memory"]
    if redis.get("maxmemory_policy") == "noeviction":
        return ["Redis maxmemory-policy is noeviction: when full it refuses writes"]
    return []


async def health(store: Store, redis: Redis, budget: float, secrets: list[str]) -> dict[str, Any]:
    """Both stores reachable, their round trips, the schema revision, Redis memory."""
    postgres, cache = await asyncio.gather(
        postgres_health(store, budget, secrets), redis_health(redis, budget, secrets)
    )
    migrations = migration_status(postgres.pop("revision"), postgres["ok"])
    return {
        "ok": bool(postgres["ok"] and cache["ok"] and migrations["ok"]),
        "postgres": postgres,
        "redis": cache,
        "migrations": migrations,
        "warnings": health_warnings(cache),
    }


# --- stats: Redis ---------------------------------------------------------------------


async def scan_kinds(
    redis: Redis, keys: Keys, progress: Progress
) -> tuple[Counter[str], list[str]]:
    """Key counts by kind under this deployment's prefix, and the names of the active sets."""
    counts: Counter[str] = Counter()
    active: list[str] = []
    seen = 0
    async for raw in redis.scan_iter(match=keys.all_pattern(), count=SCAN_BATCH):
        name = as_text(raw)
        kind = keys.kind_of(name)
        counts[kind if kind in KNOWN_KINDS else "other"] += 1
        if kind == kinds.ACTIVE:
            active.append(name)
        seen += 1
        if seen % SCAN_BATCH == 0:
            progress(SCAN_BATCH)
    progress(seen % SCAN_BATCH)
    return counts, active


async def active_users(redis: Redis, keys: Keys, names: list[str]) -> dict[str, int]:
    """Users seen per channel within the active window (ZCOUNT of each active set)."""
    since = time.time() - keys.active_window
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcount(name, since, "+inf")
        counts = await pipe.execute()
    channel_of = keys.active("")
    found = {name.removeprefix(channel_of): int(n) for name, n in zip(names, counts, strict=True)}
    return dict(sorted(found.items()))


async def counters(redis: Redis, keys: Keys) -> dict[str, Any] | None:
    """The service's tallies summed over every worker, if the workers publish them."""
    raw = await redis.hgetall(keys.stats())
    if not raw:
        return None
    values: dict[str, int] = {}
    for field, value in raw.items():
        try:
            values[as_text(field)] = int(value)
        except ValueError:
            continue
    cache = {}
    for kind in CACHE_KINDS:
        hits, misses = values.get(f"{kind}_hit", 0), values.get(f"{kind}_miss", 0)
        ratio = round(hits / (hits + misses), 4) if hits + misses else None
        cache[kind] = {"hits": hits, "misses": misses, "ratio": ratio}
    return {
        "rate_limited": values.get("rate_limited", 0),
        "duplicate": values.get("duplicate", 0),
        "cache": cache,
        "all": dict(sorted(values.items())),
    }


async def redis_stats(redis: Redis, keys: Keys, progress: Progress) -> dict[str, Any]:
    counts, active = await scan_kinds(redis, keys, progress)
    memory = await redis.info("memory")
    return {
        "active_users": {
            "window_seconds": keys.active_window,
            "by_channel": await active_users(redis, keys, active),
        },
        "live_sessions": counts.get(kinds.SESSION, 0),
        "counters": await counters(redis, keys),
        "redis": {
            "used_memory": memory.get("used_memory"),
            "used_memory_human": memory.get("used_memory_human"),
            "keys_by_kind": dict(sorted(counts.items())),
        },
    }


# --- stats: Postgres ------------------------------------------------------------------


def _counts(name: str, row: MessageCounts) -> dict[str, Any]:
    return {name: row.value, "last_hour": row.last_hour, "last_24h": row.last_24h}


async def postgres_stats(store: Store) -> dict[str, Any]:
    activity = await store.monitoring.activity()
    return {
        "conversations": asdict(activity.conversations),
        "messages": {
            "by_channel": [_counts("channel", row) for row in activity.messages_by_channel],
            "replies_by_model": [_counts("model", row) for row in activity.replies_by_model],
        },
        "postgres": {
            "tables": [asdict(row) for row in activity.tables],
            "indexes": [asdict(row) for row in activity.indexes],
        },
    }
