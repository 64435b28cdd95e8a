"""In-process stand-ins for what Redis provides across workers, and the task helpers
both sides need (cancelling for good, renewing a lease, waiting with backoff).

The keyed locks always run first (they keep one worker's messages of a user in
arrival order and spare Redis the polling); the rate limiter takes over only
while Redis is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar


class KeyedLocks:
    """One FIFO asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class LocalRateLimiter:
    """Fixed one-minute windows per key, like the Redis counter it replaces."""

    def __init__(self, window: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> tuple[int, int]:
        """Count one message; return (count in this window, seconds until it resets)."""
        now = self._clock()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._windows[key] = (start, count + 1)
        if len(self._windows) > 100_000:
            self._drop_expired(now)
        return count + 1, max(1, int(self.window - (now - start)))

    def _drop_expired(self, now: float) -> None:
        expired = [k for k, (start, _) in self._windows.items() if now - start >= self.window]
        for key in expired:
            del self._windows[key]


async def cancel_until_done(*tasks: asyncio.Task[None]) -> None:
    """Cancel `tasks` and wait until each is done.

    Cancelled again until done: on Python 3.11, asyncio.wait_for (redis-py sends every
    command under one) swallows a cancel that lands as the send completes.
    """
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)


class Renewal:
    """Runs `renew` every `interval` seconds until stopped, or until it returns False
    (the lease is lost: renewing further is pointless). Work that ends before the first
    renewal is due costs one timer, no task."""

    def __init__(self, renew: Callable[[], Awaitable[bool]], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._due = asyncio.get_running_loop().call_later(interval, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not await self._renew():
                return
            await asyncio.sleep(self._interval)

    async def stop(self) -> BaseException | None:
        """Stop renewing; what a renewal raised, if one did."""
        self._due.cancel()
        if self._task is None:
            return None
        await cancel_until_done(self._task)
        return None if self._task.cancelled() else self._task.exception()


class Backoff:
    """Pauses that double from `first` to `longest` seconds, until `budget` seconds are
    spent: `await backoff.pause()` returns False instead of pausing past the budget."""

    def __init__(self, budget: float, first: float = 0.005, longest: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._deadline = loop.time() + budget
        self._delay = first
        self._longest = longest

    async def pause(self) -> bool:
        if self._loop.time() + self._delay > self._deadline:
            return False
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, self._longest)
        return True


Item = TypeVar("Item", bound=Hashable)


class Batch(Generic[Item]):
    """Items gathered for `delay` s from the first, then written together by one call of
    `write`, off the callers' wait; in the order added, each once. `take` hands them to
    a caller that writes them its own way (on its own round trip). `write` deals with
    its own failures: what it cannot write is its to lose."""

    def __init__(
        self, write: Callable[[list[Item]], Coroutine[Any, Any, None]], delay: float
    ) -> None:
        self._write = write
        self._delay = delay
        self._items: dict[Item, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()

    def add(self, *items: Item) -> None:
        self._items.update(dict.fromkeys(items))
        if self._timer is None and self._items:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._write_soon)

    def __contains__(self, item: object) -> bool:
        """Added, not yet taken nor written."""
        return item in self._items

    def take(self) -> list[Item]:
        """What is pending, for the caller to write now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = list(self._items), {}
        return items

    async def flush(self) -> None:
        """Write what is pending, and wait for writes on their way (at shutdown)."""
        if items := self.take():
            await self._write(items)
        if self._writing:
            await asyncio.wait(set(self._writing))

    def _write_soon(self) -> None:
        self._timer = None
        if not (items := self.take()):
            return
        task = asyncio.create_task(self._write(items))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)
