"""The blocklist in Redis: the hash `blocked:users` (field `{channel}:{user id}`, value
the reason or ""), and the pub/sub channel on which a change is announced.

Every copy written from Postgres also holds the field `_loaded`, so a flushed or
evicted hash is told apart from "nobody is blocked".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from bot.blockset import Blocklist
from bot.cache.codec import text_of
from bot.cache.flags import LOADED_FIELD
from bot.cache.keys import Keys
from bot.cache.pubsub import Announcer, Guard
from bot.domain import BlockedRow


class BlocklistCache(Announcer):
    """The Redis side: read and rewrite the hash, publish a change."""

    def __init__(self, redis: Redis, keys: Keys, guard: Guard) -> None:
        super().__init__(redis, guard, keys.blocklist_invalidation_channel())
        self.keys = keys

    async def read(self) -> Blocklist | None:
        """The cached blocklist; None when the hash is missing (flushed, never filled)."""
        key = self.keys.blocklist()
        found = await self.guard.run(lambda: self.redis.hgetall(key))
        fields = [text_of(name) for name in found]
        if LOADED_FIELD not in fields:
            return None
        pairs = (name.partition(":") for name in fields if name != LOADED_FIELD)
        return Blocklist(frozenset((channel, user) for channel, _, user in pairs))

    async def write(self, rows: Sequence[BlockedRow]) -> None:
        """Replace the hash with `rows`, atomically (MULTI)."""
        key = self.keys.blocklist()
        fields: dict[Any, Any] = {LOADED_FIELD: "1"}
        fields.update((f"{r.channel}:{r.channel_user_id}", r.reason or "") for r in rows)

        async def run() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=fields)
                await pipe.execute()

        await self.guard.run(run)

    async def drop(self) -> None:
        """Delete the hash, so that workers refill it from Postgres."""
        key = self.keys.blocklist()
        await self.guard.run(lambda: self.redis.delete(key))
