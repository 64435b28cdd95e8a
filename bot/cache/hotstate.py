"""The conversation service's view of Redis: a message's turn (bot/cache/claim.py), the
rate counter, delivery marks, and the tallies summed over workers.

Every call goes through the RedisGuard, so a slow or dead Redis costs at most the
operation budget and then nothing until it is back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

from redis.asyncio import Redis

from bot.cache import scripts
from bot.cache.claim import Claims, MessageClaim
from bot.cache.guard import RedisGuard
from bot.cache.keys import RATE_WINDOW_SECONDS, Keys
from bot.cache.state import RateCount
from bot.cache.summaries import SummaryCache
from bot.domain import IncomingMessage
from bot.tallies import Tally


class HotStateCache:
    def __init__(self, redis: Redis, keys: Keys, guard: RedisGuard, lock_wait: float) -> None:
        self.redis = redis
        self.keys = keys
        self.guard = guard
        self.claims = Claims(redis, keys, guard, lock_wait)
        self.summaries = SummaryCache(redis, keys, guard)

    def claim(
        self, message: IncomingMessage, shared: bool = False, now: datetime | None = None
    ) -> MessageClaim:
        """The message's turn, to enter with `async with` (bot/cache/claim.py): its
        writer's, or (`shared`) its shared conversation's; its quota counters those of
        the day and month of `now`."""
        return self.claims.claim(message, shared, now)

    def mark_delivered(self, message: IncomingMessage) -> None:
        """The adapter delivered the reply to this event: it is to be marked done."""
        if message.platform_message_id is not None:
            self.claims.delivered.add(self.claims.event_key(message))

    async def flush_delivered(self) -> None:
        """Mark every delivered event done now (at shutdown)."""
        await self.claims.delivered.flush()

    async def count_rate(self, user_id: uuid.UUID, message: IncomingMessage) -> RateCount:
        """Count one more message of the writer (`user_id`), when BEGIN could not."""
        counter = self.keys.user_rate(message.channel, message.channel_user_id, user_id)
        call = scripts.Rate(rate_key=counter, window=RATE_WINDOW_SECONDS)
        count, ttl = await self.guard.run(lambda: self.claims.rate(call))
        return RateCount(int(count), int(ttl))

    async def add_stats(self, delta: Mapping[Tally, int]) -> None:
        """Add a worker's tallies to the deployment-wide counters (for `bot ops stats`)."""

        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for field, count in delta.items():
                    pipe.hincrby(self.keys.stats(), field, count)
                await pipe.execute()

        await self.guard.run(write)
