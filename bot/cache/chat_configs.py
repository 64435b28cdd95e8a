"""Chats' settings in Redis: `chat_config:{channel}:chat:{chat id}` and, for a thread,
`…:thread:{thread id}`, each the row's JSON or 'none' (no row: a chat without settings
costs no Postgres read either), for CHANNEL_CONFIG_TTL_SECONDS; and the pub/sub channel
on which ops announce a change, so that every worker drops its in-memory copy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bot.cache.codec import decode_channel, encode_channel, text_of
from bot.cache.guard import RedisGuard
from bot.cache.keys import Keys
from bot.cache.pubsub import Notice, notices
from bot.domain import ChannelSettings

NO_ROW = "none"


@dataclass(frozen=True, slots=True)
class Place:
    """A chat, or a thread in it (thread_id None: the chat itself)."""

    channel: str
    chat_id: str
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class Cached:
    """A place's row as Redis holds it: its settings, or None for no row."""

    layer: ChannelSettings | None


class ChatConfigCache:
    def __init__(self, redis: Redis, keys: Keys, guard: RedisGuard) -> None:
        self.redis = redis
        self.keys = keys
        self.guard = guard

    def key(self, place: Place) -> str:
        return self.keys.chat_config(place.channel, place.chat_id, place.thread_id)

    async def read(self, places: Sequence[Place]) -> list[Cached | None]:
        """Each place's row as cached; None where Redis holds nothing (or garbage)."""
        names = [self.key(place) for place in places]
        found = await self.guard.run(lambda: self.redis.mget(names))
        return [None if raw is None else _decode(raw) for raw in found]

    async def write(self, rows: Sequence[tuple[Place, ChannelSettings | None]]) -> None:
        ttl = self.keys.channel_config_ttl

        async def run() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for place, layer in rows:
                    value = NO_ROW if layer is None else encode_channel(layer)
                    pipe.set(self.key(place), value, ex=ttl)
                await pipe.execute()

        await self.guard.run(run)

    async def drop(self, place: Place) -> int:
        """Delete the cached row and tell every worker; how many workers heard it."""
        channel = self.keys.chat_config_invalidation_channel()
        announcement = json.dumps([place.channel, place.chat_id, place.thread_id])

        async def run() -> Any:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(self.key(place))
                pipe.publish(channel, announcement)
                return await pipe.execute()

        _, heard = await self.guard.run(run)
        return int(heard)

    def invalidations(self, poll: float) -> AsyncIterator[Notice]:
        """A Notice once listening, then one per chat changed (read it with `place_of`)."""
        return notices(self.redis, self.keys.chat_config_invalidation_channel(), poll)


def place_of(notice: Notice) -> Place | None:
    """The place a change announcement names; None if it names none."""
    try:
        channel, chat_id, thread_id = json.loads(notice.data or "")
    except (ValueError, TypeError):
        return None
    if isinstance(channel, str) and isinstance(chat_id, str) and isinstance(thread_id, str | None):
        return Place(channel, chat_id, thread_id)
    return None


def _decode(raw: bytes | str) -> Cached | None:
    text = text_of(raw)
    if text == NO_ROW:
        return Cached(None)
    try:
        return Cached(decode_channel(text))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: read from Postgres again
