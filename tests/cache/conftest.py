"""What the cache tests share: a HotStateCache on the suite's Redis, built as the runtime
builds one, with this test's key prefix and the times a test needs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.cache.guard import RedisGuard
from bot.cache.hotstate import HotStateCache
from bot.config import Settings
from bot.stores import create_redis, keys_for

CacheFactory = Callable[..., Awaitable[HotStateCache]]


@pytest.fixture
async def make_cache(
    make_settings: Callable[..., Settings], redis: Redis
) -> AsyncIterator[CacheFactory]:
    """HotStateCaches of one deployment (this test's prefix), each with its own client:
    several of them behave like several workers. `lock_wait` is LOCK_WAIT_SECONDS; any
    other keyword is a setting (e.g. lock_ttl_seconds=1)."""
    clients: list[Redis] = []

    async def make(lock_wait: float = 5.0, **overrides: Any) -> HotStateCache:
        settings = make_settings(**overrides)
        assert settings.redis_url is not None
        client = create_redis(settings, settings.redis_url.get_secret_value())
        clients.append(client)
        guard = RedisGuard(
            settings.redis_op_timeout_seconds, settings.redis_breaker_cooldown_seconds
        )
        return HotStateCache(client, keys_for(settings), guard, lock_wait)

    yield make
    for client in clients:
        await client.aclose()
