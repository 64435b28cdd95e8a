"""`bot ops` on a Redis Cluster (REDIS_CLUSTER): health, stats and flushes scan every
primary; a user's keys, an event's claim and a conversation's context are found in
the slots the worker put them in (bot/cache/keys.py)."""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster as ClusterClient

from bot.cache.keys import glob_escape
from bot.config import Settings
from bot.runtime import keys_for
from bot.tallies import CacheRead
from tests.ops.conftest import Ops
from tests.redis_servers import RedisCluster
from tests.support import ServiceFactory, handled, msg, new_user


async def keys_on(cluster: RedisCluster, prefix: str) -> set[str]:
    client = ClusterClient.from_url(cluster.url)
    try:
        pattern = f"{glob_escape(prefix)}*"
        return {key.decode() async for key in client.scan_iter(match=pattern)}
    finally:
        await client.aclose()


async def test_ops_find_and_flush_what_workers_keep_on_a_cluster(
    ops: Ops, make_service: ServiceFactory, cluster: RedisCluster, settings: Settings
) -> None:
    env = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}
    keys = keys_for(settings.model_copy(update={"redis_cluster": True}))
    service = await make_service(redis_url=cluster.url, redis_cluster=True)
    user = new_user()
    for text in ("one", "two"):
        await handled(service, msg(user, text, f"{user}-{text}"))
    await service.cache.flush_delivered()

    health = (await ops("health", "--json", **env)).data
    assert health["ok"] and health["redis"]["problem"] is None
    stats = (await ops("stats", "--json", **env)).data["redis"]["keys_by_kind"]
    assert stats.get("session", 0) >= 1, stats
    assert stats["context"] >= 1 and stats["dedup"] >= 2
    shown = (await ops("user", "show", "console", user, "--json", **env)).data
    assert shown["cache"]["session"]["key"] == keys.session("console", user)
    assert shown["cache"]["rate"]["count"] == 2
    assert shown["conversations"][0]["cached_context"] == 4  # the session's, on a cluster
    event = (await ops("event", "console", f"{user}-one", "--json", **env)).data
    assert event["redis"]["state"] == "done"
    conversation = shown["conversations"][0]["id"]
    seen = (await ops("conversation", "show", conversation, "--json", **env)).data
    assert seen["context"]["length"] == 4 and all(m["cached"] for m in seen["messages"])

    flushed = (
        await ops("cache", "flush", "--user", f"console:{user}", "--yes", "--json", **env)
    ).data
    assert flushed["deleted"]["session"] == 1 and flushed["deleted"]["context"] == 1
    warmed = (await ops("cache", "warm", "--since", "1h", "--json", **env)).data
    assert warmed["sessions_filled"] >= 1
    hits = service.stats[CacheRead.CONTEXT.tally(True)]
    await handled(service, msg(user, "three", f"{user}-three"))
    assert service.stats[CacheRead.CONTEXT.tally(True)] == hits + 1  # warmed, and fenced

    assert (
        await ops("cache", "flush", "--all", "--include-state", "--yes", "--json", **env)
    ).code == 0
    left = await keys_on(cluster, settings.redis_key_prefix)
    assert left <= {keys.health_probe()}  # the health check's own, expiring in a second


async def test_flags_and_erasure_on_a_cluster(
    ops: Ops,
    make_service: ServiceFactory,
    cluster: RedisCluster,
    clean_flags: None,
    settings: Settings,
) -> None:
    keys = keys_for(settings.model_copy(update={"redis_cluster": True}))
    env = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}
    service = await make_service(redis_url=cluster.url, redis_cluster=True)
    user = new_user()
    await handled(service, msg(user, "hello", f"{user}-1"))

    assert (await ops("flags", "set", "replies_disabled", "on", "--json", **env)).code == 0
    client = ClusterClient.from_url(cluster.url)
    cached = await client.hget(keys.features_global(), "replies_disabled")  # one MULTI
    await client.aclose()
    assert (await ops("flags", "unset", "replies_disabled", "--json", **env)).code == 0
    erased = (await ops("user", "delete", "console", user, "--yes", "--json", **env)).data

    assert cached == b"true"
    assert erased["redis"]["session"] == 1 and erased["redis"]["context"] == 1
    assert erased["redis"]["rate"] == 1 and erased["redis"]["active"] == 1
