"""`bot ops cache flush|warm`: what each flush deletes and keeps, and warming back."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.config import Settings
from bot.runtime import keys_for
from bot.service import ConversationService
from tests.ops.conftest import Ops, execute, keys_of, seed
from tests.support import msg, new_user

pytestmark = pytest.mark.timeout(15)


async def test_cache_flush_user_drops_only_that_users_keys(
    ops: Ops, service: ConversationService, redis: Redis, keys: Keys
) -> None:
    alice, bob = new_user(), new_user()
    first = await seed(service, alice, "one", "two")
    await service.handle(msg(alice, "/reset"))
    second = await seed(service, alice, "three")
    other = await seed(service, bob, "hi")
    user_id = (await service.store.conversations.load_session("console", alice, None)).user_id
    alices = [keys.session("console", alice), keys.rate(user_id), keys.context(first),
              keys.context(second)]  # fmt: skip
    assert await redis.exists(*alices) == 4

    ran = await ops("cache", "flush", "--user", f"console:{alice}", "--yes", "--json")

    assert ran.data["deleted"] == {"session": 1, "rate": 1, "context": 2}
    assert ran.data["total"] == 4
    assert await redis.exists(*alices) == 0
    assert await redis.exists(keys.session("console", bob), keys.context(other)) == 2
    # Postgres is the truth: the user goes on in the same conversation.
    reply = await service.handle(msg(alice, "four"))
    assert reply.conversation_id == second and "(2 earlier" in (reply.text or "")


async def test_cache_flush_conversation_and_bad_scopes(
    ops: Ops, service: ConversationService, redis: Redis, keys: Keys
) -> None:
    conversation = await seed(service, new_user(), "hello")
    ran = await ops("cache", "flush", "--conversation", str(conversation), "--yes", "--json")
    assert ran.data["deleted"] == {"context": 1}
    assert await redis.exists(keys.context(conversation)) == 0

    for argv, says in [
        (["--conversation", "nope"], "not a conversation id"),
        (["--user", "console"], "CHANNEL:ID"),
        ([], "one of the arguments --user --conversation --all is required"),
        (["--all", "--user", "console:x"], "not allowed with argument"),
        (["--user", "console:x", "--include-state"], "--include-state goes with --all"),
    ]:
        ran = await ops("cache", "flush", *argv)
        assert ran.code == 2 and says in ran.err, (argv, ran)
    stranger = new_user()
    ran = await ops("cache", "flush", "--user", f"console:{stranger}", "--yes")
    assert ran.code == 1 and f"no user '{stranger}' on channel 'console'" in ran.err, ran


async def test_cache_flush_all_keeps_dedup_markers_locks_counters_and_other_deployments(
    ops: Ops, service: ConversationService, redis: Redis, keys: Keys
) -> None:
    for n in range(3):
        await service.handle(msg(new_user(), "hello", pid=f"event-{n}"))
    await service.publish_stats()
    await redis.set(keys.lock("console", "busy"), "token", ex=60)
    stranger = f"other-deployment:{uuid.uuid4().hex}:session:console:x"
    await redis.set(stranger, "1", ex=60)
    before = await keys_of(redis, keys)
    state = {k for k in before if keys.kind_of(k) in ("dedup", "lock", "stats", "rate")}
    assert {keys.dedup("console", "event-0"), keys.stats()} <= state
    try:
        ran = await ops("cache", "flush", "--all", "--yes", "--json")

        deleted = ran.data["deleted"]
        assert deleted["session"] == 3 and deleted["context"] == 3 and deleted["active"] == 1
        assert ran.data["total"] == len(before) - len(state)
        assert ran.data["kept"] == {"dedup": 3, "lock": 1, "stats": 1, "rate": 3}
        assert await keys_of(redis, keys) == state
        assert await redis.exists(stranger) == 1

        everything = (
            await ops("cache", "flush", "--all", "--include-state", "--yes", "--json")
        ).data
        assert everything["deleted"] == {"dedup": 3, "stats": 1, "rate": 3}
        assert everything["kept"] == {"lock": 1}
        assert await keys_of(redis, keys) == {keys.lock("console", "busy")}
        assert await redis.exists(stranger) == 1
    finally:
        await redis.delete(stranger)


async def test_a_prefix_with_glob_characters_is_matched_literally(
    ops: Ops, make_settings: Callable[..., Settings], redis: Redis
) -> None:
    tag = uuid.uuid4().hex[:10]
    keys = keys_for(make_settings(redis_key_prefix=f"test:{tag}:[ab]?*:"))
    mine = keys.session("console", "x")
    # Matched by the prefix read as a glob ([ab] a, ? -, * zz), but another deployment's.
    lookalike = f"test:{tag}:a-zz:session:console:x"
    await redis.set(mine, "1", ex=60)
    await redis.set(lookalike, "1", ex=60)
    env = {"REDIS_KEY_PREFIX": keys.prefix}
    try:
        counted = (await ops("stats", "--json", **env)).data["redis"]["keys_by_kind"]
        flushed = (await ops("cache", "flush", "--all", "--yes", "--json", **env)).data

        assert counted == {"session": 1}
        assert flushed["deleted"] == {"session": 1} and flushed["kept"] == {}
        assert (await redis.exists(mine), await redis.exists(lookalike)) == (0, 1)
    finally:
        await redis.delete(mine, lookalike)


async def test_cache_warm_refills_recent_users_only(
    ops: Ops, settings: Settings, service: ConversationService, engine: AsyncEngine,
    redis: Redis, keys: Keys,
) -> None:  # fmt: skip
    recent, idle = new_user(), new_user()
    conversation = await seed(service, recent, "one", "two")
    idle_conversation = await seed(service, idle, "long ago")
    await execute(
        engine,
        "UPDATE conversations SET last_activity = now() - interval '3 hours' WHERE id = :id",
        id=idle_conversation,
    )
    before_session = await redis.hgetall(keys.session("console", recent))
    before_context = await redis.lrange(keys.context(conversation), 0, -1)
    assert (await ops("cache", "flush", "--all", "--yes")).code == 0

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
