"""`bot bench --redis-cluster` at tiny size on the run's Redis Cluster: the warm path
still waits for two Redis round trips (each a pipeline sent to every node it needs at
once) and reads nothing from Postgres. Counts only, never a time."""

from __future__ import annotations

from typing import Any

import pytest

from bot.bench.probes import READ, WRITE
from tests.bench.run import bench_report
from tests.redis_servers import RedisCluster
from tests.test_cli import bot

USERS, MESSAGES, ROUNDS = 5, 4, 2


@pytest.fixture(scope="module")
async def report(server_urls: tuple[str, str], cluster: RedisCluster) -> dict[str, Any]:
    return await bench_report(
        "--redis-cluster",
        *("--users", str(USERS), "--messages", str(MESSAGES), "--rounds", str(ROUNDS)),
        *("--concurrency", "4"),
        database_url=server_urls[0],
        redis_url=cluster.url,
    )


def test_the_warm_path_on_a_cluster_waits_for_two_round_trips(report: dict[str, Any]) -> None:
    warm = report["service"]["warm"]
    assert report["config"]["redis_cluster"] is True
    assert warm["replies"] == {"answer": USERS * MESSAGES * ROUNDS}
    assert warm["postgres_per_message"][READ] == 0
    assert 1 < warm["postgres_per_message"][WRITE] <= 3  # the exchange and the inbox's
    idle_flushes = ROUNDS / warm["messages"]  # delivery marks of a phase's last messages
    redis = warm["redis_per_message"]
    assert redis["round_trips"] <= 2 + idle_flushes
    # BEGIN's pipeline reaches the turn's node and the platform keys' (active users,
    # channel config): more sends than waits, in parallel.
    assert redis["sends"] > redis["round_trips"]
    assert warm["hit_ratio"] == {"session": 1.0, "context": 1.0, "channel_config": 1.0}


async def test_the_cluster_bench_needs_a_cluster(server_urls: tuple[str, str]) -> None:
    admin_url, redis_url = server_urls
    without = await bot("bench", "--redis-cluster", DATABASE_URL=admin_url, REDIS_URL="")
    standalone = await bot("bench", "--redis-cluster", DATABASE_URL=admin_url, REDIS_URL=redis_url)

    assert without.code == 2 and "--redis-cluster needs REDIS_URL" in without.err
    assert standalone.code == 2 and "without cluster mode" in standalone.err
