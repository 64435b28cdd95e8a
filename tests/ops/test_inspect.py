"""`bot ops health|stats|user|conversation` against the real test servers.

Data is seeded through the real conversation service; each command runs in process
through bot.cli.main (in a thread: it calls asyncio.run), with the test's settings in
the environment. Assertions are on the `--json` output, on the tables, and on what
Postgres and Redis hold afterwards. Each test uses a channel name of its own, so
Postgres counts are exact although the test database is shared.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import stat
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command
from bot.cache.keys import Keys
from bot.cli import main
from bot.config import Settings
from bot.store.engine import create_engine
from bot.store.migrate import alembic_config, head_revision
from tests.conftest import create_database, drop_database
from tests.support import ServiceFactory, fetch, msg, new_user
from tests.test_cli import bot

pytestmark = pytest.mark.timeout(15)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code in (0, 1), self
        return json.loads(self.out)


Ops = Callable[..., Awaitable[Result]]


@pytest.fixture
def ops(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Ops]:
    """Run `bot ops ARGS` in process with this test's settings; env overrides per call."""
    assert settings.database_url is not None and settings.redis_url is not None
    base = {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "COLUMNS": "250",  # rich: wide tables off a terminal, so rows stay on one line
    }
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    async def run(*args: str, **env: str) -> Result:
        for name, value in {**base, **env}.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(main, ["ops", *args])
        except SystemExit as exc:  # argparse refusing the arguments
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield run
    root.handlers[:] = saved[0]  # main() installed its own stderr handler
    root.setLevel(saved[1])


def channel_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def chat(make_service: ServiceFactory, channel: str, user: str, *texts: str) -> None:
    service = await make_service()
    for text in texts:
        await service.handle(msg(user, text, channel=channel))


async def keys_of(redis: Redis, settings: Settings) -> set[str]:
    return {k.decode() async for k in redis.scan_iter(match=f"{settings.redis_key_prefix}*")}


# --- health ---------------------------------------------------------------------------


async def test_health_reports_both_stores_and_the_current_revision(ops: Ops) -> None:
    result = await ops("health", "--json")

    data = result.json()
    assert result.code == 0, result
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


# --- stats ----------------------------------------------------------------------------


async def test_stats_counts_users_sessions_messages_and_keys(
    ops: Ops, make_service: ServiceFactory, redis: Redis, settings: Settings
) -> None:
    busy, quiet = channel_name(), channel_name()
    await chat(make_service, busy, "ann", "hello", "how are you")
    await chat(make_service, busy, "ben", "hi")
    await chat(make_service, quiet, "cy", "good morning")

    data = (await ops("stats", "--json")).json()

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
    assert data["counters"] is None  # no worker publishes its counters yet
    tables = {row["table"]: row for row in data["postgres"]["tables"]}
    assert tables["messages"]["total_bytes"] > 0
    indexes = {row["index"] for row in data["postgres"]["indexes"]}
    assert {"ix_messages_content_fts", "ix_messages_timestamp"} <= indexes


async def test_stats_sums_the_counters_the_workers_publish(
    ops: Ops, redis: Redis, settings: Settings
) -> None:
    await redis.hset(
        Keys.from_settings(settings).stats(),
        mapping={"session_hit": 3, "session_miss": 1, "rate_limited": 2, "duplicate": 5},
    )

    data = (await ops("stats", "--json")).json()

    assert data["counters"]["rate_limited"] == 2
    assert data["counters"]["duplicate"] == 5
    assert data["counters"]["cache"]["session"] == {"hits": 3, "misses": 1, "ratio": 0.75}
    assert data["counters"]["cache"]["context"]["ratio"] is None
    table = await ops("stats")
    assert table.code == 0 and "75.0%" in table.out and "Postgres indexes" in table.out


# --- user -----------------------------------------------------------------------------


async def test_user_show_has_the_row_the_cached_session_and_conversations(
    ops: Ops, make_service: ServiceFactory, redis: Redis, settings: Settings
) -> None:
    channel, user = channel_name(), new_user()
    await chat(make_service, channel, user, "first", "second", "/reset", "third")

    result = await ops("user", "show", channel, user, "--json")

    data = result.json()
    assert result.code == 0
    assert data["user"]["channel_user_id"] == user and data["user"]["username"] == user
    session = data["cache"]["session"]
    assert session["key"] == Keys.from_settings(settings).session(channel, user)
    assert 0 < session["ttl_seconds"] <= settings.session_ttl_seconds
    active, closed = data["conversations"]  # newest first
    assert (active["is_active"], active["messages"]) == (True, 2)
    assert (closed["is_active"], closed["messages"]) == (False, 4)
    assert session["fields"]["conversation_id"] == active["id"]
    assert data["cache"]["rate"]["count"] >= 1
    table = await ops("user", "show", channel, user)
    assert table.code == 0 and user in table.out and active["id"] in table.out


async def test_user_show_of_an_unknown_user_exits_1(ops: Ops) -> None:
    result = await ops("user", "show", "console", new_user(), "--json")

    assert result.code == 1
    assert "no user" in result.err and result.out == ""


async def test_user_export_holds_every_message_and_the_cache(
    ops: Ops, make_service: ServiceFactory, tmp_path: Path
) -> None:
    channel, user = channel_name(), new_user()
    await chat(make_service, channel, user, "alpha one", "/reset", "beta two")
    target = tmp_path / "export.json"

    result = await ops("user", "export", channel, user, "--output", str(target), "--json")

    assert result.code == 0
    assert result.json() == {
        "output": str(target),
        "user": result.json()["user"],
        "conversations": 2,
        "messages": 4,
    }
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    document = json.loads(target.read_text())
    contents = [m["content"] for c in document["conversations"] for m in c["messages"]]
    assert "alpha one" in contents and "beta two" in contents and len(contents) == 4
    assert document["user"]["channel_user_id"] == user
    assert document["redis"]["session"]["fields"]["user_id"] == document["user"]["id"]
    cached = [item["content"] for items in document["redis"]["contexts"].values() for item in items]
    assert "beta two" in cached
    to_stdout = await ops("user", "export", channel, user)
    assert json.loads(to_stdout.out)["user"] == document["user"]


async def _user_rows(engine: AsyncEngine, channel: str, user: str) -> dict[str, int]:
    rows = await fetch(
        engine,
        """SELECT (SELECT count(*) FROM users WHERE channel_type = :c AND channel_user_id = :u),
                  (SELECT count(*) FROM conversations c JOIN users u ON u.id = c.user_id
                   WHERE u.channel_type = :c AND u.channel_user_id = :u)""",
        c=channel,
        u=user,
    )
    return {"users": rows[0][0], "conversations": rows[0][1]}


async def test_user_delete_erases_the_user_from_both_stores(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine, redis: Redis, settings: Settings
) -> None:
    keys = Keys.from_settings(settings)
    channel, gone, kept = channel_name(), new_user(), new_user()
    service = await make_service()
    for text, pid in (("one", "p1"), ("/reset", "p2"), ("two", "p3")):
        await service.handle(msg(gone, text, pid=pid, channel=channel))
    await chat(make_service, channel, kept, "stay")
    shown = (await ops("user", "show", channel, gone, "--json")).json()
    conversations = [uuid.UUID(c["id"]) for c in shown["conversations"]]
    user_id = uuid.UUID(shown["user"]["id"])

    result = await ops("user", "delete", channel, gone, "--yes", "--json")

    data = result.json()
    assert result.code == 0
    assert data["postgres"] == {"users": 1, "conversations": 2, "messages": 4}
    assert data["redis"]["session"] == 1 and data["redis"]["active"] == 1
    assert await _user_rows(engine, channel, gone) == {"users": 0, "conversations": 0}
    assert (
        await fetch(
            engine,
            "SELECT 1 FROM messages WHERE conversation_id = ANY(:ids)",
            ids=conversations,
        )
        == []
    )
    left = await keys_of(redis, settings)
    about = {keys.session(channel, gone), keys.rate(user_id)}
    about |= {keys.context(c) for c in conversations}
    assert not (left & about)
    assert not any(gone in key for key in left if not key.startswith(keys.dedup(channel, "")))
    assert await redis.zscore(keys.active(channel), gone) is None
    assert await redis.exists(keys.dedup(channel, "p1"))  # kept: no personal data
    # The other user is untouched.
    assert await _user_rows(engine, channel, kept) == {"users": 1, "conversations": 1}
    assert keys.session(channel, kept) in left
    assert await redis.zscore(keys.active(channel), kept) is not None
    again = await ops("user", "delete", channel, gone, "--yes")
    assert again.code == 1 and "no user" in again.err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_user_delete_asks_first_and_refuses_without_a_terminal(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel, user = channel_name(), new_user()
    await chat(make_service, channel, user, "hello")

    refused = await ops("user", "delete", channel, user)  # pytest's stdin is no terminal
    assert refused.code == 2 and "--yes" in refused.err
    monkeypatch.setattr("sys.stdin", FakeTerminal("no\n"))
    declined = await ops("user", "delete", channel, user)
    assert declined.code == 1 and "Delete user" in declined.err
    assert await _user_rows(engine, channel, user) == {"users": 1, "conversations": 1}

    monkeypatch.setattr("sys.stdin", FakeTerminal("yes\n"))
    confirmed = await ops("user", "delete", channel, user)
    assert confirmed.code == 0 and "Deleted user" in confirmed.out
    assert await _user_rows(engine, channel, user) == {"users": 0, "conversations": 0}


# --- conversation ---------------------------------------------------------------------


async def test_conversation_show_marks_the_messages_in_the_cached_context(
    ops: Ops, make_service: ServiceFactory
) -> None:
    channel, user = channel_name(), new_user()
    service = await make_service(context_messages=2)  # only the newest exchange is cached
    for text in ("one", "two", "three [bold]not markup[/bold]"):
        await service.handle(msg(user, text, channel=channel))
    shown = (await ops("user", "show", channel, user, "--json")).json()
    conversation = shown["conversations"][0]["id"]

    data = (await ops("conversation", "show", conversation, "--json")).json()

    messages = data["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[0]["content"] == "one" and messages[-1]["model_used"] == "echo"
    assert [m["cached"] for m in messages] == [False] * 4 + [True] * 2
    assert all(m["token_count"] > 0 for m in messages)
    assert data["context"]["length"] == 2 and data["context"]["ttl_seconds"] > 0
    assert data["conversation"]["channel_user_id"] == user
    newest = (await ops("conversation", "show", conversation, "--limit", "3", "--json")).json()
    assert [m["content"] for m in newest["messages"]] == [m["content"] for m in messages[3:]]
    table = await ops("conversation", "show", conversation)
    assert table.code == 0 and "three [bold]not markup[/bold]" in table.out


async def test_conversation_show_refuses_bad_ids_and_reports_unknown_ones(ops: Ops) -> None:
    bad = await ops("conversation", "show", "not-a-uuid")
    unknown = await ops("conversation", "show", str(uuid.uuid4()))

    assert bad.code == 2 and "UUID" in bad.err
    assert unknown.code == 1 and "no conversation" in unknown.err


async def test_conversation_search_finds_words_through_the_gin_index(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    channel, word = channel_name(), f"zebra{uuid.uuid4().hex[:8]}"
    await chat(make_service, channel, "finder", f"where is the {word} tonight", "unrelated")
    await chat(make_service, channel, "other", f"{word} stripes and more")

    data = (await ops("conversation", "search", word, "--json")).json()

    results = data["results"]
    users = sorted({r["channel_user_id"] for r in results})
    assert users == ["finder", "other"]
    assert all(f"«{word}»" in r["snippet"] for r in results)
    assert all(r["channel"] == channel and r["conversation_id"] for r in results)
    stamps = [r["timestamp"] for r in results]
    assert stamps == sorted(stamps, reverse=True)
    narrowed = (await ops("conversation", "search", f"{word} -stripes", "--json")).json()
    assert {r["channel_user_id"] for r in narrowed["results"]} == {"finder"}
    assert (
        len((await ops("conversation", "search", word, "-n", "1", "--json")).json()["results"]) == 1
    )
    nothing = await ops("conversation", "search", f"{word}nomatch", "--json")
    assert nothing.code == 0 and nothing.json()["results"] == []
    table = await ops("conversation", "search", word)
    assert table.code == 0 and "finder" in table.out and "«" not in table.out
    async with engine.begin() as connection:  # would the planner use the index at all?
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = await connection.execute(
            sql(
                "EXPLAIN SELECT id FROM messages "
                "WHERE to_tsvector('simple', content) @@ websearch_to_tsquery('simple', :q)"
            ),
            {"q": word},
        )
    assert "ix_messages_content_fts" in "\n".join(row[0] for row in plan)


async def test_conversation_search_refuses_empty_text(ops: Ops) -> None:
    result = await ops("conversation", "search", "   ")

    assert result.code == 2 and "words" in result.err


# --- secrets and the real command line ------------------------------------------------


def _with_password(url: str) -> tuple[str, str]:
    """The URL with a password (the test servers trust local connections, so any works)."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    secret = "ops-Secret-pw-7"
    netloc = f"{parts.username or 'postgres'}:{secret}@{parts.hostname}:{parts.port or 5432}"
    return parts._replace(netloc=netloc).geturl(), secret


async def test_output_never_contains_the_database_password(
    ops: Ops, make_service: ServiceFactory, settings: Settings
) -> None:
    assert settings.database_url is not None
    url, secret = _with_password(settings.database_url.get_secret_value())
    channel, user = channel_name(), new_user()
    await chat(make_service, channel, user, "hello")

    outputs = []
    for args in (("health",), ("stats",), ("user", "show", channel, user)):
        for extra in ((), ("--json",)):
            result = await ops(*args, *extra, DATABASE_URL=url)
            assert result.code == 0, result
            outputs.append(result.out + result.err)
    missing = await ops("user", "show", channel, "nobody", DATABASE_URL=url)
    outputs.append(missing.out + missing.err)

    assert all(secret not in output for output in outputs)
    assert "***" in outputs[0]  # the health table shows the URL, masked


async def test_help_explains_every_inspection_command(ops: Ops) -> None:
    helps = {}
    for path in (("--help",), ("user", "--help"), ("conversation", "--help")):
        helps[path[0]] = await ops(*path)
    for leaf in ("health", "stats", "user show", "user export", "user delete"):
        helps[leaf] = await ops(*leaf.split(), "--help")
    helps["search"] = await ops("conversation", "search", "--help")

    assert all(result.code == 0 for result in helps.values())
    for name in ("health", "stats", "user", "conversation"):
        assert name in helps["--help"].out
    assert {"show", "export", "delete"} <= set(helps["user"].out.split())
    assert {"show", "search"} <= set(helps["conversation"].out.split())
    assert all("--json" in helps[leaf].out for leaf in ("health", "stats", "user show"))
    assert "--yes" in helps["user delete"].out and "--output" in helps["user export"].out
    assert "docs/ops.md" in helps["stats"].out


async def test_the_bot_command_line_runs_ops(settings: Settings) -> None:
    assert settings.database_url is not None and settings.redis_url is not None
    env = {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
    }

    health = await bot("ops", "health", "--json", **env)

    assert health.code == 0, health
    assert json.loads(health.out)["ok"] is True
