"""`bot bench` at tiny size against the test servers: it runs, counts what the design
promises for the warm path, and leaves nothing behind. Counts only, never a time."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from bot.bench.probes import CONTROL, PING, READ, WRITE, classify
from bot.bench.report import percentile
from tests.bench.run import bench_report
from tests.conftest import _plain

USERS, MESSAGES, ROUNDS = 5, 4, 2


@pytest.fixture(scope="module")
async def report(server_urls: tuple[str, str]) -> dict[str, Any]:
    admin_url, redis_url = server_urls
    return await bench_report(
        *("--users", str(USERS), "--messages", str(MESSAGES), "--rounds", str(ROUNDS)),
        *("--concurrency", "4", "--history", "250"),
        database_url=admin_url,
        redis_url=redis_url,
    )


def test_warm_path_reads_nothing_from_postgres_and_makes_two_redis_round_trips(
    report: dict[str, Any],
) -> None:
    warm = report["service"]["warm"]
    assert warm["messages"] == USERS * MESSAGES * ROUNDS
    assert warm["replies"] == {"answer": USERS * MESSAGES * ROUNDS}
    assert warm["postgres_per_message"][READ] == 0
    # The exchange statement, and the inbox's: each event kept (one statement for those
    # arriving together) and deleted once delivered (batched).
    assert 1 < warm["postgres_per_message"][WRITE] <= 3
    assert warm["postgres_per_message"][CONTROL] == 2  # the exchange's BEGIN and COMMIT only
    # The BEGIN and FINISH scripts; delivery marks ride on FINISH, but for the last
    # messages of a phase, which take one call of their own once it went quiet.
    idle_flushes = ROUNDS / warm["messages"]
    assert warm["redis_per_message"]["round_trips"] <= 2 + idle_flushes
    assert warm["redis_per_message"]["calls"] <= 2 + idle_flushes
    assert warm["redis_per_message"]["commands"] > 2  # what the scripts ran, server-side
    assert warm["hit_ratio"] == {"session": 1.0, "context": 1.0, "channel_config": 1.0}


def test_cold_phase_misses_the_cache_and_reads_postgres(report: dict[str, Any]) -> None:
    cold = report["service"]["cold"]
    assert cold["messages"] == USERS * ROUNDS
    assert cold["replies"] == {"answer": USERS * ROUNDS}
    assert cold["hit_ratio"]["session"] == 0 and cold["hit_ratio"]["context"] == 0
    # One statement starts the turn (writer, conversation and context together, no
    # BEGIN), then the exchange's transaction: the context's read rides on a write. The
    # one read is the quota counters' rebuild (the bench runs with quotas on): a new
    # writer's counters are not in Redis.
    assert cold["postgres_per_message"][READ] == 1
    assert 2 < cold["postgres_per_message"][WRITE] <= 4  # and the inbox's, as warm
    assert cold["postgres_per_message"][CONTROL] == 2  # the exchange's BEGIN and COMMIT


@pytest.mark.parametrize("mode", ["per_user", "shared"])
def test_group_traffic_keeps_the_warm_path_in_every_scope(
    report: dict[str, Any], mode: str
) -> None:
    cold, warm = report["groups"][mode]["cold"], report["groups"][mode]["warm"]
    assert cold["messages"] == USERS and warm["messages"] == USERS * MESSAGES
    assert warm["replies"] == {"answer": USERS * MESSAGES}
    assert warm["postgres_per_message"][READ] == 0
    assert warm["redis_per_message"]["round_trips"] <= 2 + 1 / warm["messages"]
    # The chat's settings are read once for all its members, not once per member; and
    # each new writer's quota counters once.
    assert cold["postgres_per_message"][READ] <= 1 + 1 / 5
    assert report["targets"][f"{mode}_warm_zero_postgres_reads"] is True


def test_the_warm_path_runs_with_quotas_and_an_experiment_on(report: dict[str, Any]) -> None:
    assert report["config"]["quotas"].startswith("on")
    split = report["experiment"]  # users per variant, recorded by the measured turns
    assert set(split) <= {"a", "b"} and sum(split.values()) >= USERS
    warm = report["service"]["warm"]
    assert warm["postgres_per_message"][READ] == 0
    assert warm["redis_per_message"]["round_trips"] <= 2 + 1 / warm["messages"]


def test_the_inbox_is_measured_against_the_same_run_without_it(report: dict[str, Any]) -> None:
    without = report["inbox"]["warm_without"]
    assert without["messages"] == USERS * MESSAGES * ROUNDS
    assert without["replies"] == {"answer": USERS * MESSAGES * ROUNDS}
    assert without["postgres_per_message"][READ] == 0
    assert without["postgres_per_message"][WRITE] == 1  # the one exchange statement
    assert len(report["inbox"]["ratio_by_round"]) == ROUNDS
    assert report["inbox"]["ratio_to_without"] > 0
    assert "inbox_throughput_at_least_0.8x_without" in report["targets"]


def test_baseline_does_the_storage_work_it_promises(report: dict[str, Any]) -> None:
    baseline = report["baseline"]
    assert baseline["messages"] == USERS * MESSAGES * ROUNDS
    assert baseline["postgres_per_message"][READ] == 0
    assert baseline["postgres_per_message"][WRITE] == 3  # two inserts, one update
    assert baseline["postgres_per_message"][CONTROL] == 2  # BEGIN, COMMIT
    assert baseline["redis_per_message"]["round_trips"] == 2  # read, refresh
    assert len(report["baseline_ratio_by_round"]) == ROUNDS
    assert report["baseline_ratio"] > 0


def test_memory_of_cached_sessions_is_measured(report: dict[str, Any]) -> None:
    memory = report["memory"]
    assert memory["sessions_measured"] == USERS
    assert memory["context_messages"] == 2 * (1 + MESSAGES) * ROUNDS  # 20: a full context
    assert 0 < memory["session_bytes"] < memory["bytes_per_session"]


async def test_bench_leaves_no_database_and_no_keys(
    report: dict[str, Any], server_urls: tuple[str, str]
) -> None:
    admin_url, redis_url = server_urls
    database, prefix = report["config"]["database"], report["config"]["key_prefix"]
    assert database.startswith("bot_bench_") and prefix.startswith("bench:")
    connection = await asyncpg.connect(_plain(admin_url))
    try:
        found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    finally:
        await connection.close()
    assert found is None
    redis = Redis.from_url(redis_url)
    try:
        assert [key async for key in redis.scan_iter(match=f"{prefix}*")] == []
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT id FROM conversations WHERE user_id = $1 AND is_active", READ),
        ("SELECT updated_at FROM users", READ),
        ("SELECT id FROM conversations WHERE id = $1 FOR NO KEY UPDATE", READ),
        ("WITH c AS (UPDATE conversations SET x = 1 RETURNING id) SELECT * FROM c", WRITE),
        ("INSERT INTO users (a) VALUES ($1) ON CONFLICT DO NOTHING", WRITE),
        ("-- a comment\n  DELETE FROM messages", WRITE),
        ("BEGIN ISOLATION LEVEL READ COMMITTED;", CONTROL),
        ("COMMIT;", CONTROL),
        (";", PING),
    ],
)
def test_statements_are_classified_as_reads_writes_and_control(sql: str, kind: str) -> None:
    assert classify(sql) == kind


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100 and percentile([], 0.5) == 0


def test_history_is_measured_against_the_empty_tables_of_the_same_run(
    report: dict[str, Any],
) -> None:
    empty = report["empty_database"]
    assert empty["warm"]["replies"] == {"answer": USERS * MESSAGES}
    assert empty["warm"]["postgres_per_message"][READ] == 0  # warm there too
    assert empty["ratio_with_history"] == pytest.approx(
        report["service"]["warm"]["messages_per_second"] / empty["warm"]["messages_per_second"]
    )


def test_the_platforms_the_command_line_offers_are_those_the_bench_drives() -> None:
    from bot.bench.options import PLATFORM_NAMES
    from bot.bench.platforms import PLATFORMS

    assert tuple(PLATFORMS) == PLATFORM_NAMES
