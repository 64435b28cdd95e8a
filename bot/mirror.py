"""A small table each worker holds in memory: Postgres holds it, Redis caches it, and a
pub/sub announcement (with a periodic reload, in case one is lost) keeps every copy in
step with what ops change. The feature flags (bot/flags.py) and the blocklist
(bot/blocklist.py) are both kept so; the service reads only `current`: no round trip
per message. The running A/B experiments (bot/experiments.py) are followed the same way
(`Follower`), read from Postgres only.

Ops change a row and rewrite the cache in the same Postgres transaction, under an
advisory lock that refills take too, so Redis is written in commit order; then they
publish (`publish_change`). A cache that says it is missing (flushed, evicted) is
refilled from Postgres, so a Redis flush never loses a row. When Redis is down the
worker reads Postgres instead, keeps what it last knew if that fails too, and refills
Redis when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from bot.cache.pubsub import Notice, follow
from bot.errors import CacheUnavailable, StoreUnavailable
from bot.local import cancel_until_done

log = logging.getLogger(__name__)

Row = TypeVar("Row")
Snapshot = TypeVar("Snapshot")
Snapshot_co = TypeVar("Snapshot_co", covariant=True)
Row_contra = TypeVar("Row_contra", contravariant=True)
RowsWritten = Callable[[list[Row]], Awaitable[None]]


class Bounded(Protocol):
    op_timeout: float


class MirrorCache(Protocol[Row_contra, Snapshot_co]):
    """The Redis side: the cached copy (None when missing), its rewrite, the announcements."""

    @property
    def guard(self) -> Bounded: ...

    async def read(self) -> Snapshot_co | None: ...

    async def write(self, rows: Sequence[Row_contra]) -> None: ...

    async def drop(self) -> None: ...

    async def publish(self) -> int: ...

    def invalidations(self, poll: float) -> AsyncIterator[Notice]: ...


class MirrorStore(Protocol[Row]):
    """The Postgres side: every row, and every row handed to the cache's refill under
    the table's advisory lock."""

    async def rows(self) -> list[Row]: ...

    async def refill(self, write: RowsWritten[Row]) -> list[Row]: ...


class Follower:
    """Keeps one worker's in-memory copy of something ops change: `load` at start, at
    each announcement on its pub/sub channel (also after a lost subscription is made
    again, to catch up), and every `refresh_seconds` in case an announcement was lost."""

    def __init__(
        self,
        invalidations: Callable[[float], AsyncIterator[Notice]],
        op_timeout: float,
        refresh_seconds: float,
        what: str,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.what = what  # for the logs: "feature flags", "the blocklist"
        self._invalidations = invalidations
        self._op_timeout = op_timeout
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    async def load(self) -> object:
        raise NotImplementedError

    def _subscribing(self) -> bool:
        """Whether `start` waits (briefly) for the subscription: not without Redis."""
        return True

    async def start(self) -> None:
        """Load, then listen for invalidations and refresh periodically until stop()."""
        await self.load()
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"{self.what} listener"),
            asyncio.create_task(self._refresh(), name=f"{self.what} refresh"),
        ]
        if self._subscribing():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), self._op_timeout * 4)

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
            log.exception("reloading %s failed; keeping the last known", self.what)

    async def _listen(self) -> None:
        await follow(
            lambda: self._invalidations(self.refresh_seconds),
            self._on_notice,
            self._subscribed.clear,
            self.refresh_seconds,
        )

    async def _on_notice(self, notice: Notice) -> None:
        if notice.subscribed:
            self._subscribed.set()  # and catch up on what was missed
        await self._load_in_background()


class Mirror(Follower, Generic[Row, Snapshot]):
    """One worker's copy: `current` is read by the service; a listener keeps it fresh."""

    def __init__(
        self,
        cache: MirrorCache[Row, Snapshot],
        store: MirrorStore[Row],
        refresh_seconds: float,
        snapshot: Callable[[Sequence[Row]], Snapshot],
        what: str,
    ) -> None:
        super().__init__(cache.invalidations, cache.guard.op_timeout, refresh_seconds, what)
        self.cache = cache
        self.store = store
        self._snapshot = snapshot
        self.current: Snapshot = snapshot([])
        self._redis_lost = False  # Redis failed since our last good read: refill it
        self._lock = asyncio.Lock()

    async def load(self) -> Snapshot:
        """Reload from Redis (Postgres if Redis is down or missing the copy); never
        raises for an unreachable store: what was last known stays in force."""
        async with self._lock:
            try:
                self.current = await self._fetch()
            except StoreUnavailable as exc:
                log.warning("cannot reload %s (%s); keeping the last known", self.what, exc)
            return self.current

    def _subscribing(self) -> bool:
        return not self._redis_lost

    async def _fetch(self) -> Snapshot:
        try:
            cached = await self.cache.read()
        except CacheUnavailable:
            self._redis_lost = True
            return self._snapshot(await self.store.rows())
        if cached is not None and not self._redis_lost:
            return cached
        # Missing in Redis, or Redis may hold what predates changes made while it was away.
        written = False

        async def refill(rows: list[Row]) -> None:
            nonlocal written
            with contextlib.suppress(CacheUnavailable):
                await self.cache.write(rows)
                written = True

        rows = await self.store.refill(refill)
        self._redis_lost = not written
        return self._snapshot(rows)


@dataclass(frozen=True, slots=True)
class Change(Generic[Row]):
    """One row changed in Postgres, and how far the change got towards the workers."""

    existed: bool  # the row was there before this change
    rows: list[Row]  # every row after it
    cached: bool  # Redis holds the change
    notified: int | None  # workers that got the invalidation; None: not published
    # Why the invalidation could not be published although Redis holds the change:
    # workers then follow at their next refresh.
    publish_error: str | None = None


StoreChange = Callable[[RowsWritten[Row]], Awaitable[tuple[bool, list[Row]]]]


async def publish_change(
    cache: MirrorCache[Row, Snapshot], change: StoreChange[Row]
) -> Change[Row]:
    """Run the store's `change` (whether the row existed, and every row after it), which
    hands the rows to the Redis rewrite inside its transaction, then tell every worker.
    If Redis is unreachable the change is still committed (Postgres is the source of
    truth) and `cached` is False."""
    cached = False

    async def write(rows: list[Row]) -> None:
        nonlocal cached
        cached = False
        with contextlib.suppress(CacheUnavailable):
            await cache.write(rows)
            cached = True

    try:
        existed, rows = await change(write)
    except BaseException:
        if cached:  # Redis may now show what did not commit: make workers ask Postgres
            with contextlib.suppress(CacheUnavailable):
                await cache.drop()
        raise
    if not cached:
        return Change(existed, rows, cached=False, notified=None)
    try:
        notified = await cache.publish()
    except CacheUnavailable as exc:  # the caller tells the operator; nothing is lost
        return Change(existed, rows, True, None, publish_error=str(exc))
    return Change(existed, rows, True, notified)
