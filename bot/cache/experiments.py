"""Experiments in Redis: the pub/sub channel on which ops announce that one was created
or stopped (every worker then reloads the running ones from Postgres), and the
`ab_test:{experiment}` hashes of assignments as ops read them. The hashes are written
with each exchange (FINISH, bot/cache/scripts.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from redis.asyncio import Redis

from bot.cache.flags import Guard
from bot.cache.keys import Keys
from bot.cache.pubsub import Notice, notices


class ExperimentCache:
    def __init__(self, redis: Redis, keys: Keys, guard: Guard) -> None:
        self.redis = redis
        self.keys = keys
        self.guard = guard

    async def publish(self) -> int:
        """Tell every worker to reload; how many listeners got the message."""
        channel = self.keys.experiments_invalidation_channel()
        return int(await self.guard.run(lambda: self.redis.publish(channel, "1")))

    def invalidations(self, poll: float) -> AsyncIterator[Notice]:
        """A Notice once listening, then one per change announced (bot/cache/pubsub.py)."""
        return notices(self.redis, self.keys.experiments_invalidation_channel(), poll)

    async def recorded(self, experiment: str) -> int:
        """How many users the experiment's hash holds."""
        key = self.keys.ab_test(experiment)
        return int(await self.guard.run(lambda: self.redis.hlen(key)))
