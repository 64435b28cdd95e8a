"""Feature flags: Postgres holds them, Redis caches them, each worker keeps them in memory.

Redis: hashes `features:global` and `features:channel:{channel}`, field = flag name,
value = JSON. Every hash written from Postgres also holds the field `_loaded`; a hash
without it was flushed or evicted, so the worker refills all of them from Postgres
(a Redis flush never turns a flag off).

Ops change a row and rewrite the hashes in the same Postgres transaction, under an
advisory lock that refills take too, so Redis is written in commit order; then they
publish on `features:invalidate`. Each worker reloads on that message and, in case
one is lost, every FLAGS_REFRESH_SECONDS. The service reads only the in-memory copy:
no round trip on the hot path. When Redis is down the worker reads Postgres instead,
keeps the flags it last knew if that fails too, and refills Redis when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from bot.domain import FlagRow
from bot.errors import CacheUnavailable, FlagError, StoreUnavailable
from bot.store.store import Store

if TYPE_CHECKING:
    from bot.cache.flags import FlagCache

log = logging.getLogger(__name__)

GLOBAL = "global"
LOADED_FIELD = "_loaded"
MAINTENANCE = "maintenance"
MAINTENANCE_MESSAGE = "maintenance_message"
REPLIES_DISABLED = "replies_disabled"
MAINTENANCE_TEXT = "Sorry, I'm down for maintenance right now. Please try again a little later."
_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}


@dataclass(frozen=True, slots=True)
class FlagSpec:
    kind: type
    help: str


# Every flag the service understands; `bot ops flags set` accepts only these.
KNOWN_FLAGS: dict[str, FlagSpec] = {
    MAINTENANCE: FlagSpec(
        bool,
        "answer every message with the maintenance text; nothing is stored and the "
        "responder is not called",
    ),
    MAINTENANCE_MESSAGE: FlagSpec(str, "the text sent in maintenance mode"),
    REPLIES_DISABLED: FlagSpec(
        bool, "ignore messages: no reply, nothing stored, the responder is not called"
    ),
}
MAX_TEXT = 2000


def parse_value(name: str, raw: str) -> Any:
    """The JSON value of a flag from what an operator typed, checked against its type."""
    spec = KNOWN_FLAGS.get(name)
    if spec is None:
        raise FlagError(f"unknown flag {name!r}; known flags: {', '.join(sorted(KNOWN_FLAGS))}")
    if spec.kind is bool:
        word = raw.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise FlagError(f"flag {name} is true or false (also on/off, yes/no, 1/0), not {raw!r}")
    text = raw.strip()
    if not text or len(text) > MAX_TEXT or "\x00" in text:
        raise FlagError(f"flag {name} is a text of 1 to {MAX_TEXT} characters")
    return text


@dataclass(frozen=True, slots=True)
class FlagSet:
    """The flags at one moment: a channel's value wins over the global one."""

    global_: Mapping[str, Any] = field(default_factory=dict)
    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Sequence[FlagRow]) -> FlagSet:
        global_: dict[str, Any] = {}
        channels: dict[str, dict[str, Any]] = {}
        for row in rows:
            target = global_ if row.scope == GLOBAL else channels.setdefault(row.scope, {})
            target[row.name] = row.value
        return cls(global_, channels)

    def value(self, name: str, channel: str | None = None) -> Any:
        scoped = self.channels.get(channel, {}) if channel else {}
        return scoped[name] if name in scoped else self.global_.get(name)

    def enabled(self, name: str, channel: str | None = None) -> bool:
        return self.value(name, channel) is True

    def maintenance_text(self, channel: str) -> str:
        text = self.value(MAINTENANCE_MESSAGE, channel)
        return text if isinstance(text, str) and text else MAINTENANCE_TEXT

    def rows(self) -> list[FlagRow]:
        found = [FlagRow(GLOBAL, n, v) for n, v in self.global_.items()]
        for channel, values in self.channels.items():
            found += [FlagRow(channel, n, v) for n, v in values.items()]
        return sorted(found, key=lambda row: (row.scope, row.name))


class FeatureFlags:
    """One worker's flags: `current` is read by the service; a listener keeps it fresh."""

    def __init__(self, cache: FlagCache, store: Store, refresh_seconds: float) -> None:
        self.cache = cache
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.current = FlagSet()
        self.reloads = 0
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
                self.reloads += 1
            except StoreUnavailable as exc:
                log.warning("cannot reload feature flags (%s); keeping the last known", exc)
            return self.current

    async def _fetch(self) -> FlagSet:
        try:
            cached = await self.cache.read()
        except CacheUnavailable:
            self._redis_lost = True
            return FlagSet.from_rows(await self.store.flags.rows())
        if cached is not None and not self._redis_lost:
            return cached
        # Missing in Redis, or Redis may hold what predates changes made while it was away.
        written = False

        async def refill(rows: list[FlagRow]) -> None:
            nonlocal written
            with contextlib.suppress(CacheUnavailable):
                await self.cache.write(rows)
                written = True

        rows = await self.store.flags.refill(refill)
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
        # Cancel until done: on Python 3.11, asyncio.wait_for (redis-py sends every command
        # under one) swallows a cancel that lands as the send completes.
        while pending := [task for task in tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)
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
        backoff = 0.2
        while True:
            try:
                await self._subscribe_and_wait()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("flag invalidations: %s; subscribing again", exc.__class__.__name__)
            self._subscribed.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.refresh_seconds)

    async def _subscribe_and_wait(self) -> None:
        pubsub = self.cache.redis.pubsub()
        try:
            await pubsub.subscribe(self.cache.keys.features_invalidation_channel())
            while True:
                message = await pubsub.get_message(timeout=self.refresh_seconds)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._subscribed.set()
                    await self._load_in_background()  # catch up on what was missed
                elif message["type"] == "message":
                    await self._load_in_background()
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()


class FlagSource(Protocol):
    """What the service reads: the flags in force now, held in memory."""

    current: FlagSet


class StaticFlags:
    """Flags that never change (tests, tools): the default of a service built bare."""

    def __init__(self, flags: FlagSet | None = None) -> None:
        self.current = flags or FlagSet()
