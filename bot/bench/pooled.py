"""`bot bench --pgbouncer`: the same service behind a PgBouncer in transaction mode.

A local PgBouncer (bot/embedded/pgbouncer.py) sits in front of the bench's database;
a second service, wired like a worker with DATABASE_POOLER=transaction, talks through
it with users and a key prefix of its own, in the same rounds as the direct one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from bot.bench.driver import BenchUser, Meter, ServiceDriver
from bot.bench.probes import PgProbe, RedisProbe
from bot.config import Settings
from bot.embedded.pgbouncer import local_pgbouncer
from bot.responders.echo import EchoResponder
from bot.runtime import build_service
from bot.store.engine import create_engine
from bot.stores import create_redis


@asynccontextmanager
async def pooled_driver(
    settings: Settings, url: str, control: Redis, prefix: str, users: int, channel: str
) -> AsyncIterator[ServiceDriver]:
    """A driver of a service reaching `url` through PgBouncer; its keys under `prefix`."""
    assert settings.redis_url is not None
    pooled = settings.model_copy(
        update={"database_pooler": "transaction", "redis_key_prefix": prefix}
    )
    # As many server connections as the direct service may open: the pooler, not a
    # smaller pool, is what is measured.
    with local_pgbouncer(url, pool_size=settings.db_pool_size) as bouncer_url:
        engine = create_engine(pooled, bouncer_url)
        redis = create_redis(pooled, settings.redis_url.get_secret_value())
        pg, rd = PgProbe(), RedisProbe()
        pg.attach(engine)
        rd.attach(redis)
        service = build_service(pooled, engine, redis, EchoResponder())
        names = [BenchUser(f"pooled-{i:05d}") for i in range(users)]
        try:
            yield ServiceDriver(service, names, channel, Meter(pg, rd, control, service.stats))
        finally:
            await redis.aclose()
            await engine.dispose()
