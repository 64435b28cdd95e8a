"""What every `bot ops` command works with, opened once per command and closed after it:
the settings, where the servers are, all SQL (the Store), the reads that may go to a
replica (`reads`) and the Redis side of ops (the CacheAdmin). Read-mostly: nothing is
migrated and no service is started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.admin import CacheAdmin
from bot.cache.flags import FlagCache
from bot.cache.guard import RedisGuard
from bot.channels import names
from bot.config import Settings
from bot.store.engine import create_engine
from bot.store.store import Store
from bot.stores import Endpoints, build_store, create_redis, keys_for, open_endpoints

OPS_REDIS_TIMEOUT = 2.0  # seconds for one Redis call of a command: not the hot path


@dataclass(frozen=True, slots=True)
class Ops:
    settings: Settings
    endpoints: Endpoints
    store: Store
    cache: CacheAdmin
    # Stats, search, export and conversation show: on DATABASE_READ_URL's replica when
    # set (they may lag behind it), else `store` itself.
    reads: Store

    @property
    def has_replica(self) -> bool:
        return self.reads is not self.store

    def flag_cache(self) -> FlagCache:
        """The flags' Redis hashes, for every channel the bot has."""
        cache = self.cache
        return FlagCache(cache.redis, cache.keys, cache.guard, names.ALL_NAMES)


@asynccontextmanager
async def open_ops(settings: Settings) -> AsyncIterator[Ops]:
    """Clients of both stores (embedded servers for what is not configured)."""
    async with open_endpoints(settings) as endpoints, AsyncExitStack() as stack:
        store = build_store(settings, _engine(stack, settings, endpoints.database_url))
        reads = store
        if endpoints.database_read_url is not None:
            reads = build_store(settings, _engine(stack, settings, endpoints.database_read_url))
        redis = create_redis(settings, endpoints.redis_url)
        stack.push_async_callback(redis.aclose)
        guard = RedisGuard.one_shot(max(settings.redis_op_timeout_seconds, OPS_REDIS_TIMEOUT))
        cache = CacheAdmin(redis, keys_for(settings), guard)
        yield Ops(settings, endpoints, store, cache, reads)


def _engine(stack: AsyncExitStack, settings: Settings, url: str) -> AsyncEngine:
    """A small pool for one command, disposed of when the command ends."""
    engine = create_engine(settings, url, pool_size=2)
    stack.push_async_callback(engine.dispose)
    return engine
