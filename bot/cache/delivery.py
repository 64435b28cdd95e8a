"""Events whose reply reached the platform, waiting to be marked `done` in Redis.

FINISH marks an event `answered`: stored, its reply handed to the adapter. Only once
the adapter has delivered the reply is the event `done`, so that a worker that dies
between the two leaves it `answered`, and the platform's redelivery gets the stored
reply. The marks cost no round trip of their own under load: they ride on this
worker's next FINISH, and only when none comes within `delay` do they go in one
pipelined call of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.errors import CacheUnavailable
from bot.local import Batch

log = logging.getLogger(__name__)

Flush = Callable[[list[str]], Awaitable[None]]


class DeliveredEvents(Batch[str]):
    """The dedup keys of delivered events, in the order delivered; `take` hands them to
    the next FINISH, and after `delay` without one they are marked by `mark`."""

    def __init__(self, mark: Flush, delay: float) -> None:
        async def marked(keys: list[str]) -> None:
            try:
                await mark(keys)
            except CacheUnavailable as exc:  # a redelivery would resend the stored reply
                log.debug("could not mark %d delivered events done: %s", len(keys), exc)

        super().__init__(marked, delay)
