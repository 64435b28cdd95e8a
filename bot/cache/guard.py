"""Bounds every Redis call in time and stops calling a Redis that is down.

A hung Redis must never hold a message longer than the operation budget, and after
a failure the bot must stop paying that budget per message: the breaker opens,
calls fail at once for a cool-down, then one call probes whether Redis is back.
An operator's one-shot command (`RedisGuard.one_shot`) gets the time bound and the
error mapping only: no breaker, and none of the worker's log lines about degrading.

Some error replies mean the deployment is wrong, not that one call was (RedisFault: a
Redis Cluster node where the bot expects one Redis, a read-only replica, a full
Redis that refuses writes). They open the breaker like an outage, are counted by
reason (`faults`, exported as bot_redis_faults_total), logged once per incident with
what they mean, and make readiness say Redis is degraded and why (`state`).

Every failed call is counted by kind (`errors`, exported as bot_redis_call_errors_total).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.errors import CacheRefused, CacheUnavailable, CircuitOpen

log = logging.getLogger(__name__)

T = TypeVar("T")
RecoveryHook = Callable[[], Awaitable[None]]


class RedisFault(StrEnum):
    """An error reply that means the server as a whole cannot serve the bot."""

    CROSSSLOT = "crossslot"
    MOVED = "moved"
    CLUSTERDOWN = "clusterdown"
    READONLY = "readonly"
    OOM = "oom"
    BUSY = "busy"

    @property
    def meaning(self) -> str:
        """What it says about the deployment, for the log and readiness."""
        return _MEANINGS[self]


_MEANINGS = {
    RedisFault.CROSSSLOT: "REDIS_URL names a Redis Cluster node (keys of one message "
    "are in different slots); set REDIS_CLUSTER=true",
    RedisFault.MOVED: "REDIS_URL names a Redis Cluster node that serves other slots "
    "(MOVED/ASK); set REDIS_CLUSTER=true",
    RedisFault.CLUSTERDOWN: "the Redis Cluster behind REDIS_URL is down",
    RedisFault.READONLY: "REDIS_URL names a read-only replica, not the primary",
    RedisFault.OOM: "Redis is full and refuses writes (maxmemory under noeviction)",
    RedisFault.BUSY: "a script has run on Redis for longer than its busy limit",
}
_FAULTS: tuple[tuple[type[ResponseError] | tuple[type[ResponseError], ...], RedisFault], ...] = (
    (ClusterCrossSlotError, RedisFault.CROSSSLOT),
    ((AskError, TryAgainError), RedisFault.MOVED),  # MovedError is an AskError
    (ClusterDownError, RedisFault.CLUSTERDOWN),
    ((ReadOnlyError, MasterDownError), RedisFault.READONLY),
    (OutOfMemoryError, RedisFault.OOM),
)


def fault_of(exc: BaseException | None) -> RedisFault | None:
    """The fault an error reply says the deployment has, if it says one."""
    for kinds, fault in _FAULTS:
        if isinstance(exc, kinds):
            return fault
    if isinstance(exc, ResponseError):
        text = str(exc)
        if text.startswith("BUSY"):
            return RedisFault.BUSY
        if "non local key" in text:  # a script touching a key of another cluster slot
            return RedisFault.CROSSSLOT
    return None


class RedisErrorKind(StrEnum):
    """How a Redis call failed."""

    TIMEOUT = "timeout"  # no answer within REDIS_OP_TIMEOUT_SECONDS
    CONNECTION = "connection"  # refused, reset, unresolvable: no server to talk to
    FAULT = "fault"  # an error reply saying the deployment is wrong (RedisFault)
    REFUSED = "refused"  # an error reply to this one call (a key of the wrong type, ...)
    OTHER = "other"
    CIRCUIT_OPEN = "circuit_open"  # not sent: the breaker is open


def kind_of(exc: BaseException) -> RedisErrorKind:
    if isinstance(exc, (TimeoutError, RedisTimeoutError)):
        return RedisErrorKind.TIMEOUT
    if fault_of(exc) is not None:
        return RedisErrorKind.FAULT
    if isinstance(exc, ResponseError):
        return RedisErrorKind.REFUSED
    if isinstance(exc, (RedisConnectionError, OSError)):
        return RedisErrorKind.CONNECTION
    return RedisErrorKind.OTHER


def is_outage(exc: BaseException) -> bool:
    """Whether a failed call says Redis cannot serve us, rather than refusing one call.

    An error reply (a key of the wrong type, a script failing half-way) comes from a
    server that answers: opening the breaker for it would push every user off the
    cache because of one bad key. A fault (RedisFault) is the whole server's.
    """
    return not isinstance(exc, ResponseError) or fault_of(exc) is not None


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
        self._cause = ""  # why the breaker is open
        self.faults: Counter[RedisFault] = Counter()  # error replies of each fault seen
        self.errors: Counter[RedisErrorKind] = Counter()  # failed calls of each kind

    @classmethod
    def one_shot(cls, op_timeout: float) -> RedisGuard:
        """For a command that runs once: every call bounded, a failure reported as
        CacheUnavailable at once, the next call tried all the same."""
        return cls(op_timeout, cooldown=None)

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    @property
    def state(self) -> str | None:
        """Why the bot is off the cache (readiness says so), or None while it is on."""
        return self._cause if self._open_until is not None else None

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
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise self._failed(exc, probing) from exc
        finally:
            if probing:
                self._probing = False
        if probing:
            self._recovered()
        return result

    def _failed(self, exc: BaseException, probing: bool) -> CacheUnavailable:
        name = exc.__class__.__name__
        self.errors[kind_of(exc)] += 1
        fault = fault_of(exc)
        if fault is not None:
            self.faults[fault] += 1
        if is_outage(exc):
            self._trip(exc, fault)
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
            self.errors[RedisErrorKind.CIRCUIT_OPEN] += 1
            raise CircuitOpen("Redis unavailable (circuit open)")
        self._probing = True
        return True

    def _recovered(self) -> None:
        self._open_until = None
        log.info("Redis is back; using the cache again")

    def _trip(self, exc: BaseException, fault: RedisFault | None) -> None:
        if self.cooldown is None:
            return  # no breaker: the next call tries Redis again
        cause = f"{fault.value}: {fault.meaning}" if fault else exc.__class__.__name__
        if self._open_until is None or cause != self._cause:  # once per incident
            log.warning(
                "Redis unavailable (%s); answering from Postgres and rate limiting locally "
                "until it is back",
                cause,
            )
        self._cause = cause
        self._open_until = self._clock() + self.cooldown
