"""Redis Sentinel (REDIS_SENTINELS, REDIS_SENTINEL_MASTER) with real servers of the test's
own: a primary, a replica and three sentinels. The primary is SIGKILLed while users
write; the sentinels promote the replica and the client follows. Every message is
answered, each stored once, in each user's order, and the bot is back on the cache
(the breaker closed, the new primary serving) within seconds: the test says how long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.redis_servers import RedisProcess, answering, redis_server
from tests.reliability.writers import Writers
from tests.support import ServiceFactory, until

log = logging.getLogger(__name__)
pytestmark = pytest.mark.timeout(120)

MASTER = "botmaster"
USERS = 6


@dataclass
class Sentinels:
    primary: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    async def primary_port(self) -> int:
        """The port of the primary, as the sentinels see it now."""
        client = Redis(host="127.0.0.1", port=self.sentinels[0].port)
        try:
            _, port = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        finally:
            await client.aclose()
        return int(port)


def sentinel_config(primary: int) -> str:
    return "\n".join(
        [
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2",
            f"sentinel down-after-milliseconds {MASTER} 1000",
            f"sentinel failover-timeout {MASTER} 5000",
            f"sentinel parallel-syncs {MASTER} 1",
            "",
        ]
    )


@contextmanager
def servers(root: Path) -> Iterator[Sentinels]:
    with ExitStack() as stack:
        primary = stack.enter_context(redis_server(root / "primary"))
        follow = ("--replicaof", "127.0.0.1", str(primary.port))
        replica = stack.enter_context(redis_server(root / "replica", *follow))
        config = sentinel_config(primary.port)
        sentinels = [
            stack.enter_context(redis_server(root / f"s{n}", "--sentinel", config=config))
            for n in range(3)
        ]
        yield Sentinels(primary, replica, sentinels)


async def watching(setup: Sentinels) -> None:
    """Once every sentinel knows the replica and the two other sentinels (a quorum that
    can elect a leader and fail over)."""
    for process in (setup.primary, setup.replica, *setup.sentinels):
        await answering(process.url)
    clients = [Redis(host="127.0.0.1", port=s.port) for s in setup.sentinels]
    try:

        async def ready() -> bool:
            for client in clients:
                replicas = await client.execute_command("SENTINEL", "REPLICAS", MASTER)
                peers = await client.execute_command("SENTINEL", "SENTINELS", MASTER)
                if len(replicas) < 1 or len(peers) < 2:
                    return False
            return True

        for _ in range(300):
            if await ready():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the sentinels never saw each other and the replica")
    finally:
        for client in clients:
            await client.aclose()


@pytest.fixture
async def sentinels(tmp_path: Path) -> AsyncIterator[Sentinels]:
    with servers(tmp_path) as setup:
        await watching(setup)
        yield setup


async def test_the_primary_killed_under_load_loses_nothing_and_the_client_follows(
    sentinels: Sentinels, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(
        redis_url="redis://unused-host/0",  # the sentinels say where the primary is
        redis_sentinels=sentinels.addresses,
        redis_sentinel_master=MASTER,
        redis_breaker_cooldown_seconds=0.5,
        rate_limit_per_minute=1_000_000,  # the writers are quicker than people
    )
    guard = service.cache.guard
    writers = Writers(service, USERS)

    try:
        await until(lambda: writers.each_wrote(5), 30)
        assert not guard.is_open
        old = sentinels.primary.port
        sentinels.primary.kill()
        killed = time.monotonic()
        await until(lambda: writers.writing(guard.is_open), within=30, what="the breaker opening")
        await until_async(lambda: sentinels.primary_port(), lambda port: port != old, 60)
        promoted = time.monotonic() - killed
        back = await writers.back_on_the_cache(guard, within=30) - killed
    finally:
        await writers.stop()
    log.warning(
        "sentinel failover: promoted after %.1f s, on the cache after %.1f s", promoted, back
    )
    assert await sentinels.primary_port() == sentinels.replica.port
    assert not guard.is_open  # answering from the new primary

    await writers.assert_stored_in_order(engine)


async def until_async(read: object, holds: object, within: float) -> None:
    """Poll the coroutine `read()` until `holds(value)`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if holds(await read()):  # type: ignore[operator]
                return
        except (OSError, ConnectionError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within} s")
