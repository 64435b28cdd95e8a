"""What every `bot ops` command works with, opened once per command and closed after it:
the settings, where the servers are, all SQL (the Store) and the Redis side of ops
(the CacheAdmin). Read-mostly: nothing is migrated and no service is started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.cache.admin import CacheAdmin
from bot.cache.flags import FlagCache
from bot.cache.guard import RedisGuard
from bot.channels import registry
from bot.config import Settings
from bot.runtime import Endpoints, build_store, create_redis, keys_for, open_endpoints
from bot.store.engine import create_engine
from bot.store.store import Store

OPS_REDIS_TIMEOUT = 2.0  # seconds for one Redis call of a command: not the hot path


@dataclass(frozen=True, slots=True)
class Ops:
    settings: Settings
    endpoints: Endpoints
    store: Store
    cache: CacheAdmin

    def flag_cache(self) -> FlagCache:
        """The flags' Redis hashes, for every channel the bot has."""
        cache = self.cache
        return FlagCache(cache.redis, cache.keys, cache.guard, registry.ALL_NAMES)


@asynccontextmanager
async def open_ops(settings: Settings) -> AsyncIterator[Ops]:
    """Clients of both stores (embedded servers for what is not configured)."""
    async with open_endpoints(settings) as endpoints:
        engine = create_engine(settings, endpoints.database_url, pool_size=2)
        redis = create_redis(settings, endpoints.redis_url)
        guard = RedisGuard.one_shot(max(settings.redis_op_timeout_seconds, OPS_REDIS_TIMEOUT))
        try:
            cache = CacheAdmin(redis, keys_for(settings), guard)
            yield Ops(settings, endpoints, build_store(settings, engine), cache)
        finally:
            await redis.aclose()
            await engine.dispose()
