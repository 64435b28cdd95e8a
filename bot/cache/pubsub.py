"""Listening on a Redis pub/sub channel, for the announcements that keep each worker's
in-memory copies (feature flags, the blocklist, experiments, chat configs) in step with
what ops change; and making them (`Announcer`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.cache.codec import text_of
from bot.errors import CacheUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Guard(Protocol):
    """Bounds a Redis call in time and turns its failure into CacheUnavailable:
    the worker's RedisGuard, or a plain bound for a one-shot ops command."""

    op_timeout: float

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T: ...


@dataclass(frozen=True, slots=True)
class Notice:
    """Listening from now on (`data` None: what came before may have been missed), or
    one announcement and what it says."""

    data: str | None = None

    @property
    def subscribed(self) -> bool:
        return self.data is None


async def notices(redis: Redis, channel: str, poll: float) -> AsyncIterator[Notice]:
    """A Notice once subscribed, then one per message; ends by raising CacheUnavailable
    when the connection is lost (the caller subscribes again)."""
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(channel)
        while True:
            message = await pubsub.get_message(timeout=poll)
            if message is None:
                continue
            if message["type"] == "subscribe":
                yield Notice()
            elif message["type"] == "message":
                yield Notice(text_of(message["data"]))
    except (RedisError, OSError, TimeoutError) as exc:
        raise CacheUnavailable(f"pub/sub {channel}: {exc.__class__.__name__}") from exc
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()


Subscribe = Callable[[], AsyncIterator[Notice]]
Handle = Callable[[Notice], Awaitable[None]]


async def follow(
    subscribe: Subscribe, handle: Handle, on_lost: Callable[[], None], longest: float
) -> None:
    """Hand every notice to `handle`, forever: subscribe again after a lost connection
    (telling `on_lost`), waiting from 0.2 s up to `longest` seconds between tries."""
    backoff = 0.2
    while True:
        try:
            async for notice in subscribe():
                await handle(notice)
                backoff = 0.2
        except CacheUnavailable as exc:
            log.debug("%s; subscribing again", exc)
        on_lost()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, longest)


class Announcer:
    """One pub/sub channel on which ops announce a change ("1": reload) and every worker
    listens: the Redis side of a copy each worker holds (bot/mirror.py)."""

    def __init__(self, redis: Redis, guard: Guard, channel: str) -> None:
        self.redis = redis
        self.guard = guard
        self.channel = channel

    async def publish(self) -> int:
        """Tell every worker to reload; returns how many listeners got the message."""
        return int(await self.guard.run(lambda: self.redis.publish(self.channel, "1")))

    def invalidations(self, poll: float) -> AsyncIterator[Notice]:
        """A Notice once listening, then one per change announced."""
        return notices(self.redis, self.channel, poll)
