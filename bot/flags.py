"""Feature flags: Postgres holds them, Redis caches them, each worker keeps them in memory.

This module coordinates the three (the flags themselves are bot/flagset.py, their SQL
bot/store/flags.py, their Redis hashes and pub/sub bot/cache/flags.py).

Ops change a row and rewrite the hashes in the same Postgres transaction, under an
advisory lock that refills take too, so Redis is written in commit order; then they
publish on `features:invalidate` (`change_flag`). Each worker (`FeatureFlags`) reloads
on that message and, in case one is lost, every FLAGS_REFRESH_SECONDS. A hash without
its `_loaded` field was flushed or evicted, so the worker refills all of them from
Postgres (a Redis flush never turns a flag off). The service reads only the in-memory
copy. When Redis is down the worker reads Postgres instead, keeps the flags it last
knew if that fails too, and refills Redis when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from bot.cache.flags import FlagCache
from bot.cache.pubsub import Notice, follow
from bot.domain import FlagRow
from bot.errors import CacheUnavailable, StoreUnavailable
from bot.flagset import FlagSet
from bot.local import cancel_until_done
from bot.store.flags import FlagQueries

log = logging.getLogger(__name__)


class FeatureFlags:
    """One worker's flags: `current` is read by the service; a listener keeps it fresh."""

    def __init__(self, cache: FlagCache, store: FlagQueries, refresh_seconds: float) -> None:
        self.cache = cache
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.current = FlagSet()
        self._redis_lost = False  # Redis failed since our last good read: refill it
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    async def load(self) -> FlagSet:
        """Reload from Redis (Postgres if Redis is down or missing a hash); never raises
        for an unreachable store: the flags last known stay in force."""
        async with self._lock:
            try:
                self.current = await self._fetch()
            except StoreUnavailable as exc:
                log.warning("cannot reload feature flags (%s); keeping the last known", exc)
            return self.current

    async def _fetch(self) -> FlagSet:
        try:
            cached = await self.cache.read()
        except CacheUnavailable:
            self._redis_lost = True
            return FlagSet.from_rows(await self.store.rows())
        if cached is not None and not self._redis_lost:
            return cached
        # Missing in Redis, or Redis may hold what predates changes made while it was away.
        written = False

        async def refill(rows: list[FlagRow]) -> None:
            nonlocal written
            with contextlib.suppress(CacheUnavailable):
                await self.cache.write(rows)
                written = True

        rows = await self.store.refill(refill)
        self._redis_lost = not written
        return FlagSet.from_rows(rows)

    async def start(self) -> None:
        """Load, then listen for invalidations and refresh periodically until stop()."""
        await self.load()
        self._tasks = [
            asyncio.create_task(self._listen(), name="flags-listener"),
            asyncio.create_task(self._refresh(), name="flags-refresh"),
        ]
        if not self._redis_lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), self.cache.guard.op_timeout * 4)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_until_done(*tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self._load_in_background()

    async def _load_in_background(self) -> None:
        try:
            await self.load()
        except Exception:  # a background task must outlive any failure
            log.exception("reloading feature flags failed; keeping the last known")

    async def _listen(self) -> None:
        await follow(
            lambda: self.cache.invalidations(poll=self.refresh_seconds),
            self._on_notice,
            self._subscribed.clear,
            self.refresh_seconds,
        )

    async def _on_notice(self, notice: Notice) -> None:
        if notice.subscribed:
            self._subscribed.set()  # and catch up on what was missed
        await self._load_in_background()


@dataclass(frozen=True, slots=True)
class FlagChange:
    existed: bool  # the flag was set before this change
    rows: list[FlagRow]  # every flag after it
    cached: bool  # Redis holds the change
    notified: int | None  # workers that got the invalidation; None: not published
    # Why the invalidation could not be published although Redis holds the change:
    # workers then follow at their next refresh (FLAGS_REFRESH_SECONDS).
    publish_error: str | None = None


async def change_flag(
    store: FlagQueries,
    cache: FlagCache,
    scope: str,
    name: str,
    value: Any,
    *,
    unset: bool = False,
) -> FlagChange:
    """Change one flag in Postgres and Redis, then tell every worker.

    Redis is rewritten inside the Postgres transaction; if Redis is unreachable the
    change is still committed (Postgres is the source of truth) and `cached` is False.
    """
    cached = False

    async def write(rows: list[FlagRow]) -> None:
        nonlocal cached
        cached = False
        with contextlib.suppress(CacheUnavailable):
            await cache.write(rows)
            cached = True

    try:
        existed, rows = await store.change(scope, name, value, write, unset=unset)
    except BaseException:
        if cached:  # Redis may now show what did not commit: make workers ask Postgres
            with contextlib.suppress(CacheUnavailable):
                await cache.drop()
        raise
    if not cached:
        return FlagChange(existed, rows, cached=False, notified=None)
    try:
        notified = await cache.publish()
    except CacheUnavailable as exc:  # the caller tells the operator; nothing is lost
        return FlagChange(existed, rows, True, None, publish_error=str(exc))
    return FlagChange(existed, rows, True, notified)
