"""`bot ops flags|config|cache|purge` against real servers with data seeded through the service.

Commands run in-process through the real argument parser (asserting on --json output
and on both stores afterwards); a few run as the real `bot` subprocess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.cli import main
from bot.config import Settings
from bot.domain import ReplyKind
from bot.embedded import EmbeddedRedis
from bot.flags import MAINTENANCE_TEXT, FeatureFlags
from bot.service import ConversationService
from tests.support import ServiceFactory, fetch, messages_of, msg, new_user
from tests.test_cli import bot

pytestmark = pytest.mark.timeout(15)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def data(self) -> Any:
        assert self.code == 0, (self.code, self.err)
        return json.loads(self.out)


Ops = Callable[..., Awaitable[Ran]]


@pytest.fixture
def ops(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Ops]:
    """`bot ops ARGS` in process through bot.cli.main, with this test's settings in the
    environment (plus per-call overrides, e.g. PURGE_BATCH_SIZE="4")."""
    assert settings.database_url is not None and settings.redis_url is not None
    base = {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "COLUMNS": "200",
    }
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    async def run(*args: str, **env: str) -> Ran:
        for name, value in {**base, **env}.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(main, ["ops", *args])
        except SystemExit as exc:  # argparse refusing the arguments
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    yield run
    root.handlers[:] = saved[0]  # main() installed its own log handler
    root.setLevel(saved[1])


@pytest.fixture(autouse=True)
async def clean_flags(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    async with engine.begin() as connection:
        await connection.exec_driver_sql("DELETE FROM feature_flags")
        await connection.exec_driver_sql("DELETE FROM channel_configs")


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys.from_settings(settings)


async def until(check: Callable[[], Any], within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within} s"
        await asyncio.sleep(0.05)


# --- flags ----------------------------------------------------------------------------


async def test_flags_set_get_list_unset(
    ops: Ops, settings: Settings, engine: AsyncEngine, redis: Redis, keys: Keys
) -> None:
    ran = await ops("flags", "set", "replies_disabled", "on", "--channel", "slack", "--json")
    assert ran.data["action"] == "set" and ran.data["cached"] is True
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
        (["get", "nope"], "invalid choice"),
    ],
)
async def test_flags_refuse_bad_input(
    ops: Ops, settings: Settings, engine: AsyncEngine, argv: list[str], says: str
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
    flushed = await ops("cache", "flush", "--all", **down)
    assert flushed.code == 1 and "Redis" in flushed.err, flushed


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_flag_set_by_ops_reaches_two_workers_and_survives_redis_down(
    ops: Ops,
    make_service: ServiceFactory,
    make_settings: Callable[..., Settings],
    own_redis: EmbeddedRedis,
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


# --- config ---------------------------------------------------------------------------


async def test_config_set_validates_upserts_and_invalidates_the_cache(
    ops: Ops,
    settings: Settings,
    service: ConversationService,
    engine: AsyncEngine,
    redis: Redis,
    keys: Keys,
) -> None:
    user = new_user()
    assert (await service.handle(msg(user, "hi"))).model == settings.default_model
    assert await redis.exists(keys.channel_config("console")) == 1  # cached on that miss

    ran = await ops(
        "config", "set", "console", "default_model=llama3:8b",
        "rate_limit_per_minute=30", "system_prompt=Be brief, and kind.", "temperature=0.5",
        "max_tokens=500", "--json",
    )  # fmt: skip

    assert ran.data["cache_invalidated"] is True
    assert ran.data["settings"] == {
        "rate_limit_per_minute": 30, "system_prompt": "Be brief, and kind.",
        "temperature": 0.5, "max_tokens": 500,
    }  # fmt: skip
    rows = await fetch(engine, "SELECT default_model, settings FROM channel_configs")
    assert rows == [("llama3:8b", ran.data["settings"])]
    assert await redis.exists(keys.channel_config("console")) == 0
    assert (await service.handle(msg(user, "again"))).model == "llama3:8b"

    ran = await ops("config", "set", "console", "temperature=", "default_model=", "--json")
    assert "temperature" not in ran.data["settings"] and ran.data["default_model"] is None

    shown = (await ops("config", "show", "console", "--json")).data
    values = {v["key"]: (v["value"], v["from"]) for v in shown["values"]}
    assert values["rate_limit_per_minute"] == (30, "channel")
    assert values["default_model"] == (settings.default_model, "DEFAULT_MODEL")
    listed = (await ops("config", "show", "--json")).data["channel_configs"]
    assert [row["channel"] for row in listed] == ["console"]


@pytest.mark.parametrize(
    ("pairs", "says"),
    [
        (["colour=blue"], "valid keys: default_model, max_tokens, rate_limit_per_minute"),
        (["temperature=3"], "temperature must be from 0 to 2"),
        (["rate_limit_per_minute=fast"], "must be a whole number"),
        (["max_tokens=0"], "max_tokens must be from 1"),
        (["default_model=not a model"], "is not a model name"),
        (["system_prompt"], "is not key=value"),
        (["max_tokens=5", "max_tokens=6"], "given twice"),
    ],
)
async def test_config_set_refuses_bad_input_and_changes_nothing(
    ops: Ops, settings: Settings, engine: AsyncEngine, pairs: list[str], says: str
) -> None:
    ran = await ops("config", "set", "slack", *pairs)
    assert ran.code == 2 and says in ran.err, ran
    assert await fetch(engine, "SELECT 1 FROM channel_configs") == []


# --- cache ----------------------------------------------------------------------------


async def seed(service: ConversationService, user: str, *texts: str) -> uuid.UUID:
    """Messages through the real service; the user's conversation id."""
    reply = None
    for text in texts:
        reply = await service.handle(msg(user, text))
    assert reply is not None and reply.conversation_id is not None
    return reply.conversation_id


async def test_cache_flush_user_drops_only_that_users_keys(
    ops: Ops, settings: Settings, service: ConversationService, redis: Redis, keys: Keys
) -> None:
    alice, bob = new_user(), new_user()
    first = await seed(service, alice, "one", "two")
    await service.handle(msg(alice, "/reset"))
    second = await seed(service, alice, "three")
    other = await seed(service, bob, "hi")
    user_id = (await service.store.load_session("console", alice, None)).user_id
    alices = [keys.session("console", alice), keys.rate(user_id), keys.context(first),
              keys.context(second)]  # fmt: skip
    assert await redis.exists(*alices) == 4

    ran = await ops("cache", "flush", "--user", f"console:{alice}", "--json")

    assert ran.data["deleted"] == {"session": 1, "rate": 1, "context": 2}
    assert ran.data["total"] == 4
    assert await redis.exists(*alices) == 0
    assert await redis.exists(keys.session("console", bob), keys.context(other)) == 2
    # Postgres is the truth: the user goes on in the same conversation.
    reply = await service.handle(msg(alice, "four"))
    assert reply.conversation_id == second and "(2 earlier" in (reply.text or "")


async def test_cache_flush_conversation_and_bad_scopes(
    ops: Ops, settings: Settings, service: ConversationService, redis: Redis, keys: Keys
) -> None:
    conversation = await seed(service, new_user(), "hello")
    ran = await ops("cache", "flush", "--conversation", str(conversation), "--json")
    assert ran.data["deleted"] == {"context": 1}
    assert await redis.exists(keys.context(conversation)) == 0

    for argv, says in [
        (["--conversation", "nope"], "not a conversation id"),
        (["--user", "console"], "CHANNEL:ID"),
        ([], "one of the arguments --user --conversation --all is required"),
        (["--all", "--user", "console:x"], "not allowed with argument"),
    ]:
        ran = await ops("cache", "flush", *argv)
        assert ran.code == 2 and says in ran.err, (argv, ran)
    stranger = new_user()
    ran = await ops("cache", "flush", "--user", f"console:{stranger}")
    assert ran.code == 1 and f"no user '{stranger}' on channel 'console'" in ran.err, ran


async def test_cache_flush_all_stays_under_the_prefix_and_keeps_locks(
    ops: Ops, settings: Settings, service: ConversationService, redis: Redis, keys: Keys
) -> None:
    for _ in range(3):
        await seed(service, new_user(), "hello")
    await redis.set(keys.lock("console", "busy"), "token", ex=60)
    stranger = f"other-deployment:{uuid.uuid4().hex}:session:console:x"
    await redis.set(stranger, "1", ex=60)
    mine = [k async for k in redis.scan_iter(match=keys.all_pattern())]
    try:
        ran = await ops("cache", "flush", "--all", "--json")

        deleted = ran.data["deleted"]
        assert deleted["session"] == 3 and deleted["context"] == 3 and deleted["rate"] == 3
        assert ran.data["total"] == len(mine) - 1 and ran.data["kept_locks"] == 1
        assert [k async for k in redis.scan_iter(match=keys.all_pattern())] == [
            keys.lock("console", "busy").encode()
        ]
        assert await redis.exists(stranger) == 1
    finally:
        await redis.delete(stranger)


async def test_cache_warm_refills_recent_users_only(
    ops: Ops,
    settings: Settings,
    service: ConversationService,
    engine: AsyncEngine,
    redis: Redis,
    keys: Keys,
) -> None:
    recent, idle = new_user(), new_user()
    conversation = await seed(service, recent, "one", "two")
    idle_conversation = await seed(service, idle, "long ago")
    await fetch_exec(
        engine,
        "UPDATE conversations SET last_activity = now() - interval '3 hours' WHERE id = :id",
        id=idle_conversation,
    )
    before_session = await redis.hgetall(keys.session("console", recent))
    before_context = await redis.lrange(keys.context(conversation), 0, -1)
    assert (await ops("cache", "flush", "--all")).code == 0

    ran = await ops("cache", "warm", "--since", "1h", "--json")

    assert ran.data["users"] >= 1 and ran.data["sessions_filled"] >= 1
    session = await redis.hgetall(keys.session("console", recent))
    assert {k: session[k] for k in (b"user_id", b"conversation_id", b"model")} == {
        k: before_session[k] for k in (b"user_id", b"conversation_id", b"model")
    }
    assert 0 < await redis.ttl(keys.session("console", recent)) <= settings.session_ttl_seconds
    assert await redis.lrange(keys.context(conversation), 0, -1) == before_context
    assert await redis.exists(keys.session("console", idle), keys.context(idle_conversation)) == 0
    # The next message is served from the warmed cache.
    hits = service.stats["session_hit"], service.stats["context_hit"]
    await service.handle(msg(recent, "three"))
    assert (service.stats["session_hit"], service.stats["context_hit"]) == (
        hits[0] + 1,
        hits[1] + 1,
    )

    # Warming again overwrites nothing a worker keeps fresher.
    fresh = await redis.lrange(keys.context(conversation), 0, -1)
    fresh_session = await redis.hgetall(keys.session("console", recent))
    assert (await ops("cache", "warm", "--json")).code == 0
    assert await redis.lrange(keys.context(conversation), 0, -1) == fresh and len(fresh) == 6
    assert await redis.hgetall(keys.session("console", recent)) == fresh_session

    assert (await ops("cache", "warm", "--since", "soon")).code == 2


async def fetch_exec(engine: AsyncEngine, sql: str, **params: Any) -> None:
    from sqlalchemy import text

    async with engine.begin() as connection:
        await connection.execute(text(sql), params)


# --- purge ----------------------------------------------------------------------------


async def test_purge_dry_run_then_purge_in_batches(
    ops: Ops, make_service: ServiceFactory, make_settings: Callable[..., Settings],
    engine: AsyncEngine, redis: Redis, keys: Keys,
) -> None:  # fmt: skip
    service = await make_service()
    old, current = new_user(), new_user()
    old_conversation = await seed(service, old, "a", "b", "c")  # 6 messages
    await service.handle(msg(old, "/reset"))  # closes it: inactive, will be left empty
    kept_active = await seed(service, current, "x", "y")  # 4 messages
    await fetch_exec(
        engine,
        """UPDATE messages SET timestamp = now() - interval '1000 days'
           WHERE conversation_id = :old OR (conversation_id = :active AND content = 'x')""",
        old=old_conversation, active=kept_active,
    )  # fmt: skip
    await fetch_exec(
        engine,
        "UPDATE conversations SET last_activity = now() - interval '999 days' WHERE id = :id",
        id=old_conversation,
    )
    batch = {"PURGE_BATCH_SIZE": "4"}
    assert await redis.exists(keys.context(old_conversation), keys.context(kept_active)) == 2

    dry = (await ops("purge", "--older-than", "900d", "--dry-run", "--json", **batch)).data
    assert dry["dry_run"] is True
    assert dry["postgres"] == {"messages": 7, "conversations": 1}
    assert dry["redis"] == {"context": 2}
    assert len(await messages_of(engine, old)) == 6  # nothing changed

    ran = (await ops("purge", "--older-than", "900d", "--json", **batch)).data

    assert ran["dry_run"] is False
    assert ran["postgres"] == {"messages": 7, "conversations": 1}
    assert ran["redis"] == {"context": 2}
    assert await messages_of(engine, old) == []
    assert (
        await fetch(engine, "SELECT 1 FROM conversations WHERE id = :id", id=old_conversation) == []
    )
    kept = [m.content for m in await messages_of(engine, current)]
    assert len(kept) == 3 and "x" not in kept and "y" in kept
    assert await redis.exists(keys.context(old_conversation), keys.context(kept_active)) == 0
    # The active user goes on; the context is rebuilt from what Postgres kept.
    reply = await service.handle(msg(current, "z"))
    assert reply.conversation_id == kept_active and "(3 earlier" in (reply.text or "")

    again = (await ops("purge", "--older-than", "900d", "--json")).data
    assert again["postgres"] == {"messages": 0, "conversations": 0}


@pytest.mark.parametrize("age", ["90", "0d", "-1d", "ninety days", "5y"])
async def test_purge_refuses_a_bad_age(ops: Ops, settings: Settings, age: str) -> None:
    ran = await ops("purge", f"--older-than={age}", "--dry-run")
    assert ran.code == 2 and "is not a duration" in ran.err, ran


# --- the real command line ------------------------------------------------------------


async def test_the_bot_command_explains_and_refuses_before_reaching_any_store(
    tmp_path: Path,
) -> None:
    # No server is configured: bad input is refused before anything would be started.
    data_dir = tmp_path / "data"
    env = {"DATA_DIR": str(data_dir)}
    listed, flag_help, refused_config, refused_flag, refused_age = await asyncio.gather(
        bot("ops", "--help"),
        bot("ops", "flags", "set", "--help"),
        bot("ops", "config", "set", "console", "colour=blue", **env),
        bot("ops", "flags", "set", "maintenance", "maybe", **env),
        bot("ops", "purge", "--older-than", "90", **env),
    )
    assert listed.code == 0 and flag_help.code == 0
    assert all(word in listed.out for word in ("flags", "config", "cache", "purge"))
    assert "maintenance" in flag_help.out and "replies_disabled" in flag_help.out
    assert (refused_config.code, refused_flag.code, refused_age.code) == (2, 2, 2)
    assert "valid keys: default_model, max_tokens" in refused_config.err
    assert "true or false" in refused_flag.err and "is not a duration" in refused_age.err
    assert not data_dir.exists()
