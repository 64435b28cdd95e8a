"""Bounds every Redis call in time and stops calling a Redis that is down.

A hung Redis must never hold a message longer than the operation budget, and after
a failure the bot must stop paying that budget per message: the breaker opens,
calls fail at once for a cool-down, then one call probes whether Redis is back.
An operator's one-shot command (`RedisGuard.one_shot`) gets the time bound and the
error mapping only: no breaker, and none of the worker's log lines about degrading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from bot.errors import CacheRefused, CacheUnavailable, CircuitOpen

log = logging.getLogger(__name__)

T = TypeVar("T")
RecoveryHook = Callable[[], Awaitable[None]]

# Error replies that mean the server as a whole cannot serve us for a while.
_SERVER_WIDE_REPLIES = (ReadOnlyError, OutOfMemoryError, ClusterDownError)


def is_outage(exc: BaseException) -> bool:
    """Whether a failed call says Redis is down or hung, rather than refusing one call.

    An error reply (a key of the wrong type, a script failing half-way) comes from a
    server that answers: opening the breaker for it would push every user off the
    cache because of one bad key.
    """
    if not isinstance(exc, ResponseError):
        return True
    return isinstance(exc, _SERVER_WIDE_REPLIES) or str(exc).startswith("BUSY")


class RedisGuard:
    def __init__(
        self,
        op_timeout: float,
        cooldown: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.op_timeout = op_timeout
        self.cooldown = cooldown  # None: no circuit breaker (a one-shot command)
        self._clock = clock
        self._open_until: float | None = None
        self._probing = False
        self._on_recovery: list[RecoveryHook] = []

    @classmethod
    def one_shot(cls, op_timeout: float) -> RedisGuard:
        """For a command that runs once: every call bounded, a failure reported as
        CacheUnavailable at once, the next call tried all the same."""
        return cls(op_timeout, cooldown=None)

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def on_recovery(self, hook: RecoveryHook) -> None:
        """Run `hook` when Redis answers again after an outage, before any other call."""
        self._on_recovery.append(hook)

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation within the budget, or raise CacheUnavailable.

        Raises CircuitOpen (a CacheUnavailable) without calling Redis while it is down.
        """
        probing = self._admit()
        try:
            async with asyncio.timeout(self.op_timeout):
                if probing:
                    for hook in self._on_recovery:
                        await hook()
                result = await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc, probing) from exc
        finally:
            if probing:
                self._probing = False
        if probing:
            self._recovered()
        return result

    def _failed(self, exc: BaseException, probing: bool) -> CacheUnavailable:
        name = exc.__class__.__name__
        if is_outage(exc):
            self._trip(exc)
            return CacheUnavailable(f"Redis unavailable: {name}")
        if probing:
            self._recovered()
        if self.cooldown is not None:  # a one-shot command reports it to its operator
            log.warning("Redis refused a call (%s: %s)", name, exc)
        return CacheRefused(f"Redis refused a call: {name}")

    def _admit(self) -> bool:
        """Whether this call probes a Redis that was down; raises while it stays open."""
        if self._open_until is None:
            return False
        # One caller at a time probes after the cool-down; the rest fail fast.
        if self._clock() < self._open_until or self._probing:
            raise CircuitOpen("Redis unavailable (circuit open)")
        self._probing = True
        return True

    def _recovered(self) -> None:
        self._open_until = None
        log.info("Redis is back; using the cache again")

    def _trip(self, exc: BaseException) -> None:
        if self.cooldown is None:
            return  # no breaker: the next call tries Redis again
        if self._open_until is None:
            log.warning(
                "Redis unavailable (%s); answering from Postgres and rate limiting locally "
                "until it is back",
                exc.__class__.__name__,
            )
        self._open_until = self._clock() + self.cooldown
