"""`bot ops stats`: counts from both stores, and the counters the workers publish."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from bot.cache.keys import Keys
from tests.ops.conftest import Ops, channel_name, chat
from tests.support import ServiceFactory

pytestmark = pytest.mark.timeout(15)


async def test_stats_counts_users_sessions_messages_and_keys(
    ops: Ops, make_service: ServiceFactory
) -> None:
    busy, quiet = channel_name(), channel_name()
    await chat(make_service, busy, "ann", "hello", "how are you")
    await chat(make_service, busy, "ben", "hi")
    await chat(make_service, quiet, "cy", "good morning")

    data = (await ops("stats", "--json")).data

    assert data["active_users"]["by_channel"] == {busy: 2, quiet: 1}
    assert data["live_sessions"] == 3
    kinds = data["redis"]["keys_by_kind"]
    assert kinds["session"] == 3 and kinds["context"] == 3 and kinds["active"] == 2
    assert kinds["rate"] == 3
    by_channel = {row["channel"]: row for row in data["messages"]["by_channel"]}
    assert by_channel[busy] == {"channel": busy, "last_hour": 6, "last_24h": 6}
    assert by_channel[quiet]["last_24h"] == 2
    assert any(row["model"] == "echo" for row in data["messages"]["replies_by_model"])
    assert data["conversations"]["open"] >= 3
    assert data["counters"] is None  # no worker has published its counters
    tables = {row["table"]: row for row in data["postgres"]["tables"]}
    assert tables["messages"]["total_bytes"] > 0
    indexes = {row["index"] for row in data["postgres"]["indexes"]}
    assert {"ix_messages_content_fts", "ix_messages_timestamp"} <= indexes


async def test_stats_sums_the_counters_the_workers_publish(
    ops: Ops, redis: Redis, keys: Keys
) -> None:
    await redis.hset(
        keys.stats(),
        mapping={"session_hit": 3, "session_miss": 1, "rate_limited": 2, "duplicate": 5},
    )

    data = (await ops("stats", "--json")).data

    assert data["counters"]["rate_limited"] == 2
    assert data["counters"]["duplicate"] == 5
    assert data["counters"]["cache"]["session"] == {"hits": 3, "misses": 1, "ratio": 0.75}
    assert data["counters"]["cache"]["context"]["ratio"] is None
    table = await ops("stats")
    assert table.code == 0 and "75.0%" in table.out and "Postgres indexes" in table.out
