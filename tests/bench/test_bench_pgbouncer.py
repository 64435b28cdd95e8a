"""`bot bench --pgbouncer` at tiny size: the same service through a local PgBouncer in
transaction mode answers every message with the warm path's one write, paying one more
round trip for parsing its unnamed statement. Counts only, never a time."""

from __future__ import annotations

from typing import Any

import pytest

from bot.bench.probes import CONTROL, PREPARE, READ, WRITE
from bot.embedded.pgbouncer import pgbouncer_binary
from tests.bench.run import bench_report
from tests.support import required_binary

USERS, MESSAGES, ROUNDS = 5, 4, 2


@pytest.fixture(scope="module")
async def report(server_urls: tuple[str, str]) -> dict[str, Any]:
    required_binary(pgbouncer_binary(), "pgbouncer")
    admin_url, redis_url = server_urls
    return await bench_report(
        "--pgbouncer",
        *("--users", str(USERS), "--messages", str(MESSAGES), "--rounds", str(ROUNDS)),
        *("--concurrency", "4", "--no-baseline"),
        database_url=admin_url,
        redis_url=redis_url,
    )


def test_the_warm_path_behind_pgbouncer_is_still_one_write_in_one_transaction(
    report: dict[str, Any],
) -> None:
    pooled = report["pgbouncer"]["warm"]
    direct = report["service"]["warm"]
    assert pooled["replies"] == {"answer": USERS * MESSAGES * ROUNDS}
    pg = pooled["postgres_per_message"]
    # BEGIN, the exchange, COMMIT; and the inbox's statements (each event kept, deleted
    # once delivered; shared by the events arriving together), with no BEGIN.
    assert (pg[READ], pg[CONTROL]) == (0, 2) and 1 < pg[WRITE] <= 3
    # Every statement prepared unnamed, in its own round trip: nothing outlives it.
    assert pg[PREPARE] == pg[WRITE] and direct["postgres_per_message"][PREPARE] == 0
    assert pooled["hit_ratio"] == direct["hit_ratio"]
    assert len(report["pgbouncer"]["ratio_by_round"]) == ROUNDS
