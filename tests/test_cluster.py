"""The bot on a real Redis Cluster (REDIS_CLUSTER): 3 primaries, 3 replicas, started by
the test. Each message's keys share the slot of its place (bot/cache/keys.py), so
its scripts run whole on one node; the platform's keys go beside them in the same
pipeline (bot/cache/beside.py). Answers come from the cache, in order, with nothing
refused."""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.claim import event_key, turn_keys
from bot.cache.deployment import CLUSTER_NODE, NOT_A_CLUSTER
from bot.cache.keys import Keys
from bot.config import Settings
from bot.domain import ChatKind, IncomingMessage, ReplyKind
from bot.errors import ConfigError
from bot.experimentset import ExperimentSet, StaticExperiments, Variant
from bot.runtime import check_redis
from bot.service import ConversationService
from bot.stores import create_redis, keys_for
from bot.tallies import CacheRead, Tally
from tests.redis_servers import RedisCluster
from tests.support import (
    ServiceFactory,
    assert_in_order,
    conversation_of,
    echo,
    execute,
    fetch,
    handled,
    msg,
    new_user,
)


def in_group(user: str, text: str, chat: str, thread: str | None = None) -> IncomingMessage:
    kind = ChatKind.THREAD if thread else ChatKind.GROUP
    return IncomingMessage(
        "slack", user, text, username=user, platform_message_id=uuid.uuid4().hex,
        chat_id=chat, thread_id=thread, chat_kind=kind,
    )  # fmt: skip


def turn_slots(keys: Keys, message: IncomingMessage, shared: bool) -> set[int]:
    turn = turn_keys(keys, message, shared)
    context = keys.context_of(turn.session, uuid.uuid4())
    names = [turn.lock, turn.session, turn.author, context, event_key(keys, message)]
    return {key_slot(name.encode()) for name in names}


@pytest.mark.parametrize(
    ("message", "shared"),
    [
        (msg("u1", "a dm", "e1", channel="telegram"), False),
        (in_group("u1", "in a group", "C1"), False),
        (in_group("u1", "in a thread", "C1", "1733.01"), True),
    ],
    ids=["dm", "group per user", "shared thread"],
)
def test_the_keys_of_a_turn_share_one_slot_on_a_cluster_and_only_there(
    settings: Settings, message: IncomingMessage, shared: bool
) -> None:
    keys = keys_for(settings)
    on_cluster = keys_for(settings.model_copy(update={"redis_cluster": True}))

    assert len(turn_slots(on_cluster, message, shared)) == 1
    assert len(turn_slots(keys, message, shared)) > 1  # the tags make the difference
    session = on_cluster.session(message.channel, message.channel_user_id, message.scope.key)
    assert session.replace("{", "").replace("}", "") == keys.session(
        message.channel, message.channel_user_id, message.scope.key
    )  # the reference name, with braces added


async def on_cluster(make_service: ServiceFactory, cluster: RedisCluster) -> ConversationService:
    return await make_service(redis_url=cluster.url, redis_cluster=True)


async def test_a_service_on_a_cluster_answers_from_the_cache_in_order(
    make_service: ServiceFactory, cluster: RedisCluster, engine: AsyncEngine
) -> None:
    service = await on_cluster(make_service, cluster)
    user = new_user()

    replies = [await handled(service, msg(user, f"m{n}", f"{user}-{n}")) for n in range(4)]

    assert [r.text for r in replies] == [echo(f"m{n}", 2 * n) for n in range(4)]
    assert service.stats[CacheRead.SESSION.tally(True)] == 3  # all but the first
    assert service.stats[CacheRead.CONTEXT.tally(True)] == 3
    assert service.stats[Tally.CACHE_UNAVAILABLE] == 0 and not service.cache.guard.faults
    assert_in_order(await conversation_of(engine, user))
    await service.cache.flush_delivered()  # the events are marked done
    again = await service.handle(msg(user, "m0", f"{user}-0"))  # a redelivered event
    assert again.kind is ReplyKind.DUPLICATE


async def test_groups_and_shared_threads_on_a_cluster(
    make_service: ServiceFactory, cluster: RedisCluster
) -> None:
    first, second = await on_cluster(make_service, cluster), await on_cluster(make_service, cluster)
    alice, bob, chat = new_user(), new_user(), f"C{uuid.uuid4().hex[:8]}"
    thread = f"{uuid.uuid4().int % 10**6}.000100"

    own = [await first.handle(in_group(u, "hi", chat)) for u in (alice, bob)]
    talk = [
        await worker.handle(in_group(user, text, chat, thread))
        for worker, user, text in ((first, alice, "tea?"), (second, bob, "coffee"))
    ]
    last = await first.handle(in_group(alice, "so?", chat, thread))

    assert own[0].conversation_id != own[1].conversation_id  # a Slack channel: per user
    assert talk[0].conversation_id == talk[1].conversation_id == last.conversation_id
    assert last.text is not None and "4 earlier messages" in last.text  # the other's too
    for worker in (first, second):
        assert worker.stats[Tally.CACHE_UNAVAILABLE] == 0 and not worker.cache.guard.faults
    assert first.stats[CacheRead.SESSION.tally(True)] >= 1  # the thread's, from the cache


async def test_the_cluster_setting_must_match_the_redis_it_names(
    cluster: RedisCluster, settings: Settings, redis_url: str
) -> None:
    clustered = settings.model_copy(update={"redis_cluster": True})
    right = create_redis(clustered, cluster.url)
    await check_redis(right, cluster.url, cluster=True)  # no complaint
    await right.aclose()

    for config, url, problem in (
        (settings, cluster.url, CLUSTER_NODE),
        (clustered, redis_url, NOT_A_CLUSTER),
    ):
        client = create_redis(config, url)
        with pytest.raises(ConfigError, match=problem.split(";")[0]):
            await check_redis(client, url, cluster=config.redis_cluster)
        await client.aclose()


def test_cluster_settings_are_checked(settings: Settings) -> None:
    with pytest.raises(ValueError, match="REDIS_CLUSTER_NODES needs REDIS_CLUSTER"):
        Settings(_env_file=None, redis_cluster_nodes="127.0.0.1:7000")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="must not hold"):
        Settings(_env_file=None, redis_cluster=True, redis_key_prefix="{x}:")  # type: ignore[call-arg]


async def test_quotas_are_counted_beside_the_scripts_on_a_cluster(
    make_service: ServiceFactory, cluster: RedisCluster
) -> None:
    service = await make_service(
        redis_url=cluster.url, redis_cluster=True, quota_user_day_tokens=150
    )
    user = new_user()

    kinds = [
        (await handled(service, msg(user, f"number {n} " * 5, f"{user}-{n}"))).kind
        for n in range(12)
    ]

    assert kinds[0] is ReplyKind.ANSWER and kinds[-1] is ReplyKind.OVER_QUOTA
    assert service.stats[Tally.QUOTA_REBUILT] == 1  # read from Postgres once, then counted
    assert service.stats[Tally.CACHE_UNAVAILABLE] == 0 and not service.cache.guard.faults


async def test_an_experiments_variant_is_recorded_beside_finish_on_a_cluster(
    make_service: ServiceFactory, cluster: RedisCluster, engine: AsyncEngine
) -> None:
    service = await on_cluster(make_service, cluster)
    name, variants = (
        f"exp-{uuid.uuid4().hex[:8]}",
        (Variant("a", "m-a", 50), Variant("b", "m-b", 50)),
    )
    experiment = await service.store.experiments.create(name, variants, f"t{uuid.uuid4().hex[:6]}")
    service.experiments = StaticExperiments(ExperimentSet({}, {"telegram": experiment}))
    try:
        user = new_user()
        reply = await handled(service, msg(user, "hi", f"{user}-1", channel="telegram"))
        (row,) = await fetch(
            engine, "SELECT user_id, variant FROM experiment_assignments WHERE experiment = :n",
            n=name,
        )  # fmt: skip
        keys = service.cache.keys
        recorded = await service.cache.redis.hgetall(keys.ab_test(name))  # its own slot
        assert recorded == {keys.ab_test_field(row.user_id).encode(): row.variant.encode()}
        assert reply.model == f"m-{row.variant}"
        assert service.stats[Tally.CACHE_UNAVAILABLE] == 0 and not service.cache.guard.faults
    finally:
        await execute(engine, "DELETE FROM experiments WHERE name = :n", n=name)
