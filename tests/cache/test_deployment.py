"""A Redis the bot cannot run on, said loudly (bot/cache/deployment.py, guard.py): real
redis-servers of the test's own, a Redis Cluster node and a replica. The worker
refuses to start on them with one line naming REDIS_URL; a service already running
on one opens its breaker, counts the fault, logs it once and says why in readiness;
`bot ops health` reports it, never "healthy"."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.deployment import CLUSTER_NODE, REPLICA, deployment_problem
from bot.cache.guard import RedisFault
from bot.config import Settings
from bot.health import HealthServer
from bot.metrics import Metrics
from tests.redis_servers import answering, redis_server
from tests.support import ServiceFactory, free_port, msg, new_user
from tests.test_cli import bot

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cluster_node(tmp_path: Path) -> AsyncIterator[str]:
    """One node of a Redis Cluster serving every slot: multi-slot scripts get CROSSSLOT."""
    # The cluster bus port must be given: port + 10000 may be taken, or over 65535.
    bus = ("--cluster-port", str(free_port()))
    with redis_server(tmp_path / "node", "--cluster-enabled", "yes", *bus) as node:
        await answering(node.url)
        client = Redis.from_url(node.url)
        await client.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        await client.aclose()
        yield node.url


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[str]:
    with redis_server(tmp_path / "primary") as primary:
        await answering(primary.url)
        follow = ("--replicaof", "127.0.0.1", str(primary.port))
        with redis_server(tmp_path / "replica", *follow) as replica:
            await answering(replica.url)
            yield replica.url


async def test_a_cluster_node_and_a_replica_are_told_apart_from_one_redis(
    cluster_node: str, replica: str, redis: Redis
) -> None:
    assert deployment_problem(await redis.info()) is None
    for url, problem in ((cluster_node, CLUSTER_NODE), (replica, REPLICA)):
        client = Redis.from_url(url)
        try:
            assert deployment_problem(await client.info()) == problem
        finally:
            await client.aclose()


async def refused_start(url: str, problem: str, settings: Settings) -> None:
    """`bot chat` on Redis `url` stops before it starts: exit 2 (a setting to fix), one
    line naming it."""
    assert settings.database_url is not None
    database = settings.database_url.get_secret_value()
    done = await bot("chat", DATABASE_URL=database, REDIS_URL=url)
    assert done.code == 2, done.err
    [line] = [line for line in done.err.splitlines() if problem in line]
    assert "REDIS_URL" in line and "Traceback" not in done.err


async def test_the_worker_refuses_to_start_on_a_cluster_node(
    cluster_node: str, settings: Settings
) -> None:
    await refused_start(cluster_node, CLUSTER_NODE, settings)


async def test_the_worker_refuses_to_start_on_a_replica(replica: str, settings: Settings) -> None:
    await refused_start(replica, REPLICA, settings)


async def test_a_service_on_a_cluster_node_answers_from_postgres_and_says_why(
    cluster_node: str,
    make_service: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
    engine: AsyncEngine,
) -> None:
    metrics = Metrics()
    service = await make_service(redis_url=cluster_node, metrics=metrics)
    guard = service.cache.guard
    user = new_user()
    with caplog.at_level(logging.WARNING, logger="bot.cache.guard"):
        for text in ("one", "two", "three"):
            reply = await service.handle(msg(user, text))
            assert reply.text is not None and text in reply.text  # answered all the same

    assert guard.faults[RedisFault.CROSSSLOT] >= 1
    assert guard.state is not None and guard.state.startswith("crossslot: REDIS_URL names")
    logged = [r for r in caplog.records if "crossslot" in r.getMessage()]
    assert len(logged) == 1  # once per incident, not once per message
    rendered = metrics.render().decode()
    assert 'bot_redis_faults_total{reason="crossslot"}' in rendered
    assert "bot_redis_circuit_open 1.0" in rendered

    health = HealthServer(engine, service.cache.redis, metrics, [], lambda: guard.state)
    readiness = await health.readiness()
    assert readiness["redis"].startswith("degraded: crossslot")


async def test_ops_health_is_not_healthy_on_a_cluster_node(
    cluster_node: str, settings: Settings
) -> None:
    assert settings.database_url is not None
    database = settings.database_url.get_secret_value()
    done = await bot("ops", "health", "--json", DATABASE_URL=database, REDIS_URL=cluster_node)
    assert done.code != 0
    assert '"ok": false' in done.out and CLUSTER_NODE in done.out


@pytest.fixture
async def full_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A Redis at its memory limit under noeviction: it refuses every write."""
    limits = ("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    with redis_server(tmp_path / "full", *limits) as server:
        await answering(server.url)
        client = Redis.from_url(server.url)
        try:
            for n in range(10_000):
                await client.set(f"filler:{n}", "x" * 1000)
        except OutOfMemoryError:
            pass
        finally:
            await client.aclose()
        yield server.url


async def test_a_full_redis_is_not_healthy_and_a_service_on_it_says_why(
    full_redis: str, settings: Settings, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    assert settings.database_url is not None
    database = settings.database_url.get_secret_value()
    done = await bot("ops", "health", "--json", DATABASE_URL=database, REDIS_URL=full_redis)
    assert done.code != 0 and RedisFault.OOM.meaning in done.out

    metrics = Metrics()
    service = await make_service(redis_url=full_redis, metrics=metrics)
    reply = await service.handle(msg(new_user(), "hello"))
    assert reply.text is not None and "hello" in reply.text  # answered from Postgres
    guard = service.cache.guard
    assert guard.faults[RedisFault.OOM] >= 1
    health = HealthServer(engine, service.cache.redis, metrics, [], lambda: guard.state)
    assert (await health.readiness())["redis"] == f"degraded: oom: {RedisFault.OOM.meaning}"
