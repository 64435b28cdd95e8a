"""`bot bench --streaming` at tiny size against the test servers and the emulators: it
runs every platform's real adapter, counts what docs/benchmarks.md promises for a
streamed exchange, and leaves nothing behind. Counts only, never a time target."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from bot.cache.keys import glob_escape
from tests.bench.run import bench_report
from tests.conftest import _plain

CONVERSATIONS, REPLIES = 3, 2


@pytest.fixture(scope="module")
async def report(server_urls: tuple[str, str]) -> dict[str, Any]:
    admin_url, redis_url = server_urls
    return await bench_report(
        "--streaming",
        *("--concurrency", str(CONVERSATIONS), "--replies", str(REPLIES)),
        *("--first-token", "0.05", "--tokens-per-second", "200", "--reply-words", "30"),
        *("--think", "1"),  # as people read: inside the per-chat limits
        database_url=admin_url,
        redis_url=redis_url,
    )


@pytest.mark.parametrize("platform", ["telegram", "discord", "slack"])
def test_each_platform_streams_every_reply_in_two_transactions(
    report: dict[str, Any], platform: str
) -> None:
    found = report["platforms"][platform]
    assert found["replies"] == CONVERSATIONS * REPLIES
    # The user's message before the first piece, the reply before the final update; and
    # the inbox's statements, with no BEGIN: each event kept as it arrives, deleted once
    # delivered (batched with others).
    pg = found["postgres_per_message"]
    assert (pg["reads"], pg["transactions"]) == (0, 2) and 2 < pg["writes"] <= 4
    assert found["platform_429s"] == 0
    assert found["updates_per_reply"]["mean"] >= 2  # the first text, then the final one
    shown, llm = found["first_visible_ms"], found["llm_first_token_ms"]
    assert llm["p50"] >= 45  # the LLM's own 50 ms, measured at the LLM
    assert shown["p50"] >= llm["p50"]  # nothing is shown before the LLM's first token
    assert found["overhead_ms"]["p50"] == pytest.approx(shown["p50"] - llm["p50"], abs=60)


async def test_the_streaming_bench_leaves_no_keys_and_no_database(
    report: dict[str, Any], server_urls: tuple[str, str]
) -> None:
    admin_url, redis_url = server_urls
    client = Redis.from_url(redis_url)
    try:
        prefix = glob_escape(report["config"]["key_prefix"])
        assert [key async for key in client.scan_iter(match=f"{prefix}*")] == []
    finally:
        await client.aclose()
    connection = await asyncpg.connect(_plain(admin_url))
    try:
        database = report["config"]["database"]
        found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    finally:
        await connection.close()
    assert found is None
