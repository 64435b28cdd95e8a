"""Events whose reply reached the platform, waiting to be marked `done` in Redis.

FINISH marks an event `answered`: stored, its reply handed to the adapter. Only once
the adapter has delivered the reply is the event `done`, so that a worker that dies
between the two leaves it `answered`, and the platform's redelivery gets the stored
reply. The marks cost no round trip of their own under load: they ride on this
worker's next FINISH, and only when none comes within `delay` do they go in one
pipelined call of their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bot.errors import CacheUnavailable

log = logging.getLogger(__name__)

Flush = Callable[[list[str]], Awaitable[None]]


class DeliveredEvents:
    def __init__(self, flush: Flush, delay: float) -> None:
        self._flush = flush
        self._delay = delay
        self._keys: dict[str, None] = {}  # dedup keys, in the order delivered
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    def add(self, dedup_key: str) -> None:
        self._keys[dedup_key] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._flush_soon)

    def __contains__(self, dedup_key: str) -> bool:
        """Delivered by this worker, not yet marked: a redelivery here is a duplicate."""
        return dedup_key in self._keys

    def take(self) -> list[str]:
        """The keys to mark now (by the caller's own script call)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        keys, self._keys = list(self._keys), {}
        return keys

    async def flush(self) -> None:
        """Mark what is pending, and wait for marks already on their way (at shutdown)."""
        keys = self.take()
        if keys:
            await self._mark(keys)
        if self._flushing:
            await asyncio.wait(self._flushing)

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.create_task(self._mark(self.take()))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _mark(self, keys: list[str]) -> None:
        try:
            await self._flush(keys)
        except CacheUnavailable as exc:  # a redelivery would resend the stored reply
            log.debug("could not mark %d delivered events done: %s", len(keys), exc)
