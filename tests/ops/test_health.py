"""`bot ops health` against the real test servers, a dead port and an old schema."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from alembic import command
from bot.config import Settings
from bot.store.engine import create_engine
from bot.store.migrate import alembic_config, head_revision
from tests.conftest import create_database, drop_database
from tests.ops.conftest import Ops

pytestmark = pytest.mark.timeout(15)


async def test_health_reports_both_stores_and_the_current_revision(ops: Ops) -> None:
    data = (await ops("health", "--json")).data

    assert data["ok"] is True
    assert data["postgres"]["ok"] and data["postgres"]["latency_ms"] > 0
    assert data["redis"]["ok"] and data["redis"]["latency_ms"] > 0
    assert data["redis"]["used_memory"] > 0 and data["redis"]["maxmemory_policy"]
    assert data["migrations"] == {
        "ok": True,
        "current": head_revision(),
        "head": head_revision(),
        "status": "current",
    }
    table = await ops("health")
    assert table.code == 0 and "Postgres" in table.out and "healthy" in table.out


async def test_health_exits_1_when_a_store_is_down_without_printing_a_password(
    ops: Ops,
) -> None:
    result = await ops(
        "health",
        "--json",
        "--timeout",
        "3",
        DATABASE_URL="postgresql://ops:pg-Secret-9x@127.0.0.1:1/bot",
        REDIS_URL="redis://:rd-Secret-9x@127.0.0.1:1/0",
    )

    assert result.code == 1
    data = result.json()
    assert data["ok"] is False
    assert data["postgres"]["ok"] is False and data["postgres"]["error"]
    assert data["redis"]["ok"] is False and data["redis"]["error"]
    assert data["migrations"]["status"] == "unknown"
    assert "127.0.0.1:1" in data["postgres"]["url"]
    for secret in ("pg-Secret-9x", "rd-Secret-9x"):
        assert secret not in result.out + result.err
    table = await ops("health", DATABASE_URL="postgresql://ops:pg-Secret-9x@127.0.0.1:1/bot")
    assert table.code == 1 and "DOWN" in table.out and "pg-Secret-9x" not in table.out
    # Not "no revision": that is what a database never migrated says.
    assert "database revision unknown" in table.out and "no revision" not in table.out


async def _database_at(url: str, revision: str) -> None:
    config = alembic_config()
    engine = create_engine(Settings(_env_file=None), url, pool_size=1)
    try:
        async with engine.connect() as connection:

            def upgrade(sync: Any) -> None:
                config.attributes["connection"] = sync
                command.upgrade(config, revision)

            await connection.run_sync(upgrade)
            await connection.commit()
    finally:
        await engine.dispose()


async def test_health_exits_1_when_the_schema_is_behind(
    ops: Ops, server_urls: tuple[str, str]
) -> None:
    name = f"bot_ops_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_urls[0], name)
    try:
        await _database_at(url, "0001")
        result = await ops("health", "--json", DATABASE_URL=url)
    finally:
        await drop_database(server_urls[0], name)

    assert result.code == 1
    data = result.json()
    assert data["postgres"]["ok"] and data["redis"]["ok"]
    assert data["migrations"]["status"] == "behind"
    assert data["migrations"]["current"] == "0001"


async def test_health_counts_the_messages_in_the_inbox_and_warns_of_old_ones(
    ops: Ops, database_url: str
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO inbox (channel_type, platform_message_id, place, message, holder, "
            "held_until, received_at) VALUES "
            "('telegram', 'h-1', 'p', '{}', gen_random_uuid(), now() + interval '1 minute', "
            " now()),"
            "('telegram', 'h-2', 'p', '{}', gen_random_uuid(), now() - interval '1 minute', "
            " now() - interval '10 minutes')"
        )
    finally:
        await connection.close()
    data = (await ops("health", "--json")).data
    inbox = data["inbox"]
    assert (inbox["pending"], inbox["waiting"], inbox["error"]) == (2, 1, None)
    assert 570 < inbox["oldest_seconds"] < 700
    assert any("1 of them held by no worker" in w for w in data["warnings"]), data["warnings"]
    table = await ops("health")
    assert "2 messages not yet answered (1 held by no worker)" in table.out
