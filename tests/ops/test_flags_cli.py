"""`bot ops flags`: set, read and remove flags; how a change reaches the workers."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.domain import ReplyKind
from bot.embedded import EmbeddedRedis
from bot.flags import FeatureFlags
from bot.flagset import MAINTENANCE_TEXT
from tests.ops.conftest import Ops
from tests.support import ServiceFactory, fetch, msg, new_user
from tests.test_flags import until

pytestmark = [pytest.mark.timeout(15), pytest.mark.usefixtures("clean_flags")]


async def test_flags_set_get_list_unset(
    ops: Ops, engine: AsyncEngine, redis: Redis, keys: Keys
) -> None:
    ran = await ops("flags", "set", "replies_disabled", "on", "--channel", "slack", "--json")
    assert ran.data["action"] == "set" and ran.data["cached"] is True
    assert "warnings" not in ran.data
    assert await fetch(engine, "SELECT scope, name, value FROM feature_flags") == [
        ("slack", "replies_disabled", True)
    ]
    assert await redis.hget(keys.features_channel("slack"), "replies_disabled") == b"true"

    got = await ops("flags", "get", "replies_disabled", "--channel", "slack", "--json")
    assert got.data == {
        "name": "replies_disabled",
        "channel": "slack",
        "value": True,
        "from": "slack",
    }
    got = await ops("flags", "get", "replies_disabled", "--json")
    assert got.data["value"] is None and got.data["from"] == "unset"
    listed = (await ops("flags", "list", "--json")).data["flags"]
    assert [(f["scope"], f["name"], f["value"]) for f in listed] == [
        ("slack", "replies_disabled", True)
    ]

    ran = await ops("flags", "unset", "replies_disabled", "--channel", "slack", "--json")
    assert ran.data["action"] == "unset"
    assert await fetch(engine, "SELECT 1 FROM feature_flags") == []
    assert await redis.hget(keys.features_channel("slack"), "replies_disabled") is None
    readable = await ops("flags", "list")
    assert readable.code == 0 and "no flag is set" in readable.out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["set", "maintainance", "true"],
            "invalid choice: 'maintainance' (choose from 'maintenance',",
        ),
        (["set", "maintenance", "perhaps"], "true or false"),
        (["set", "maintenance", "true", "--channel", "irc"], "unknown channel 'irc'"),
        (["set", "maintenance_message", "back \udcff soon"], "not valid UTF-8"),
        (["get", "nope"], "invalid choice"),
    ],
)
async def test_flags_refuse_bad_input(
    ops: Ops, engine: AsyncEngine, argv: list[str], says: str
) -> None:
    ran = await ops("flags", *argv)
    assert ran.code == 2 and says in ran.err, ran
    assert await fetch(engine, "SELECT 1 FROM feature_flags") == []


async def test_with_redis_down_flags_still_commit_and_cache_commands_fail(
    ops: Ops, engine: AsyncEngine
) -> None:
    down = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    ran = await ops("flags", "set", "maintenance", "on", "--json", **down)

    assert ran.data["cached"] is False and ran.data["workers_notified"] is None
    assert "Redis is unreachable: the change is in Postgres only" in ran.err
    rows = await fetch(engine, "SELECT scope, name, value FROM feature_flags")
    assert rows == [("global", "maintenance", True)]
    flushed = await ops("cache", "flush", "--all", "--yes", **down)
    assert flushed.code == 1 and "Redis" in flushed.err, flushed


async def test_a_change_that_cannot_be_published_warns_of_the_refresh(
    ops: Ops, own_redis: EmbeddedRedis, keys: Keys
) -> None:
    client = Redis.from_url(own_redis.url)
    try:
        await client.execute_command("ACL", "SETUSER", "default", "-publish")  # type: ignore[no-untyped-call]
        ran = await ops(
            "flags", "set", "maintenance", "on", "--json",
            REDIS_URL=own_redis.url, FLAGS_REFRESH_SECONDS="7",
        )  # fmt: skip
        cached = await client.hget(keys.features_global(), "maintenance")
    finally:
        await client.aclose()

    assert ran.data["cached"] is True and ran.data["workers_notified"] is None
    assert cached == b"true"  # Redis holds the change; only the announcement failed
    [warning] = ran.data["warnings"]
    assert "telling the workers failed" in warning
    assert "within FLAGS_REFRESH_SECONDS (7 s)" in warning
    assert "warning: " in ran.err and "FLAGS_REFRESH_SECONDS" in ran.err


async def test_a_flag_set_by_ops_reaches_two_workers_and_survives_redis_down(
    ops: Ops, make_service: ServiceFactory, own_redis: EmbeddedRedis
) -> None:
    tuning = {"flags_refresh_seconds": 0.5, "redis_op_timeout_seconds": 0.3}
    workers = [await make_service(redis_url=own_redis.url, **tuning) for _ in range(2)]
    listeners = [w.flags for w in workers]
    assert all(isinstance(f, FeatureFlags) for f in listeners)
    for flags in listeners:
        await flags.start()  # type: ignore[attr-defined]
    env = {"REDIS_URL": own_redis.url}
    user = new_user()

    async def all_in(kind: ReplyKind) -> bool:
        replies = [await w.handle(msg(user, "hello")) for w in workers]
        return all(r.kind is kind for r in replies)

    try:
        assert await all_in(ReplyKind.ANSWER)
        assert (await ops("flags", "set", "maintenance", "true", "--json", **env)).data["cached"]
        await until(lambda: all_in(ReplyKind.MAINTENANCE), within=3)
        assert (await workers[0].handle(msg(user, "x"))).text == MAINTENANCE_TEXT

        assert (await ops("flags", "unset", "maintenance", **env)).code == 0
        await until(lambda: all_in(ReplyKind.ANSWER), within=3)

        assert (await ops("flags", "set", "maintenance", "yes", **env)).code == 0
        await until(lambda: all_in(ReplyKind.MAINTENANCE), within=3)
        own_redis.stop()
        await asyncio.sleep(2)  # several refreshes against a dead Redis
        assert await all_in(ReplyKind.MAINTENANCE)  # last known flags kept
    finally:
        for flags in listeners:
            await flags.stop()  # type: ignore[attr-defined]
