"""Experiments in Redis: the pub/sub channel on which ops announce that one was created
or stopped (every worker then reloads the running ones from Postgres), and the
`ab_test:{experiment}` hashes of assignments as ops read them. The hashes are written
with each exchange (FINISH, bot/cache/scripts.py)."""

from __future__ import annotations

from redis.asyncio import Redis

from bot.cache.keys import Keys
from bot.cache.pubsub import Announcer, Guard


class ExperimentCache(Announcer):
    def __init__(self, redis: Redis, keys: Keys, guard: Guard) -> None:
        super().__init__(redis, guard, keys.experiments_invalidation_channel())
        self.keys = keys

    async def recorded(self, experiment: str) -> int:
        """How many users the experiment's hash holds."""
        key = self.keys.ab_test(experiment)
        return int(await self.guard.run(lambda: self.redis.hlen(key)))
