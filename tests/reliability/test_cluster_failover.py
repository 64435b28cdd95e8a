"""A Redis Cluster (REDIS_CLUSTER) of the test's own, 3 primaries with a replica each.
The primary serving some users' keys is SIGKILLed while they write; the cluster
promotes its replica and the client follows the new slot map. Meanwhile the bot
answers from Postgres. Every message is answered, each stored once, in each user's
order, and the bot is back on the cache within seconds: the test says how long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.stores import keys_for
from tests.redis_servers import RedisCluster, RedisProcess, redis_cluster
from tests.reliability.writers import Writers
from tests.support import ServiceFactory, until

log = logging.getLogger(__name__)
pytestmark = pytest.mark.timeout(120)

USERS = 6


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path / "cluster") as started:
        yield started


async def serving(cluster: RedisCluster, slot: int) -> RedisProcess:
    """The node that serves `slot` now, as the cluster says."""
    for node in cluster.nodes:
        if node.process.poll() is not None:
            continue
        client = Redis(host="127.0.0.1", port=node.port)
        try:
            ranges = await client.execute_command("CLUSTER", "SLOTS")
        finally:
            await client.aclose()
        for start, end, primary, *_ in ranges:
            if start <= slot <= end:
                port = int(primary[1])
                return next(n for n in cluster.nodes if n.port == port)
    raise AssertionError("no node serves the slot")


async def test_a_primary_killed_under_load_loses_nothing_and_the_client_follows(
    own_cluster: RedisCluster, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(
        redis_url=own_cluster.url,
        redis_cluster=True,
        redis_breaker_cooldown_seconds=0.5,
        rate_limit_per_minute=1_000_000,  # the writers are quicker than people
    )
    guard, keys = service.cache.guard, keys_for(service.settings)
    writers = Writers(service, USERS)

    slot = key_slot(keys.session("console", writers.users[0]).encode())
    try:
        await until(lambda: writers.each_wrote(5), 30)
        assert not guard.is_open
        victim = await serving(own_cluster, slot)
        victim.kill()
        killed = time.monotonic()
        await until(lambda: writers.writing(guard.is_open), within=30, what="the breaker opening")
        for _ in range(600):
            if (await serving(own_cluster, slot)).port != victim.port:
                break
            await asyncio.sleep(0.1)
        promoted = time.monotonic() - killed
        back = await writers.back_on_the_cache(guard, within=60) - killed
    finally:
        await writers.stop()
    log.warning(
        "cluster failover: promoted after %.1f s, on the cache after %.1f s", promoted, back
    )
    assert (await serving(own_cluster, slot)).port != victim.port
    assert not guard.is_open  # answering from the new primary

    await writers.assert_stored_in_order(engine)
