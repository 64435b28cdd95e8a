"""Every tally the service counts reaches /metrics, under its own name; and every
series a dashboard or an alert reads moves on a real /metrics when its event happens."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.guard import RedisGuard
from bot.channels.base import ChannelAdapter
from bot.channels.dispatch import Dispatcher
from bot.domain import ReplyKind
from bot.embedded import EmbeddedRedis
from bot.errors import CacheRefused, CacheUnavailable, CircuitOpen
from bot.health import HealthServer
from bot.metrics import BY_LABEL, EXPORTED, Metrics
from bot.service import UNAVAILABLE_TEXT
from bot.tallies import CacheRead, Tally
from tests.support import ServiceFactory, execute, handled, msg, new_user
from tests.test_faults_postgres import DISK_FULL, NO_DISK_FULL, run_sql
from tests.test_service_recovery import SHORT_LOCK, DyingAfterCommit
from tests.test_worker import QueueChannel


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_every_tally_is_exported_with_its_count() -> None:
    stats: Counter[Tally] = Counter({tally: n for n, tally in enumerate(Tally, start=1)})
    metrics = Metrics()
    metrics.export_tallies(lambda: stats)

    found = samples(metrics)

    cache_reads = {read.tally(hit) for read in CacheRead for hit in (True, False)}
    # each tally has one home on /metrics
    assert set(EXPORTED) | set(BY_LABEL) | cache_reads == set(Tally)
    for tally, (name, _) in EXPORTED.items():
        assert found[(name, ())] == stats[tally], name
    for read in CacheRead:
        for result, hit in (("hit", True), ("miss", False)):
            labels = (("kind", read.value), ("result", result))
            assert found[("bot_cache_requests_total", labels)] == stats[read.tally(hit)]
    for tally, (name, _, label, value) in BY_LABEL.items():
        assert found[(f"{name}_total", ((label, value),))] == stats[tally], tally


def test_the_circuit_breaker_state_is_a_gauge() -> None:
    state = {"open": False}
    metrics = Metrics()
    metrics.export_circuit(lambda: state["open"])

    assert samples(metrics)[("bot_redis_circuit_open", ())] == 0
    state["open"] = True
    assert samples(metrics)[("bot_redis_circuit_open", ())] == 1


# -- every series scraped from a real /metrics, moving when its event happens ----------------


Scraped = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(
    metrics: Metrics, engine: AsyncEngine, redis: Redis, channels: Sequence[ChannelAdapter] = ()
) -> Scraped:
    """GET /metrics of a real health server on these metrics: every sample."""
    health = HealthServer(engine, redis, metrics, channels)
    port = await health.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
            exposition = await response.text()
    finally:
        await health.stop()
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scraped: Scraped, name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


async def test_pool_use_is_read_from_the_pool_at_each_scrape(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics, db_pool_size=1, db_max_overflow=2)
    pool = service.store.engine  # the service's own pool; the health check uses `engine`

    idle = await scrape(metrics, engine, redis)
    assert value(idle, "bot_postgres_pool_size") == 1
    assert value(idle, "bot_postgres_pool_max_overflow") == 2
    assert value(idle, "bot_postgres_pool_checked_out") == 0
    assert value(idle, "bot_postgres_pool_overflow") == 0
    async with pool.connect() as first, pool.connect() as second:
        for connection in (first, second):
            await connection.execute(text("SELECT 1"))
        busy = await scrape(metrics, engine, redis)
    assert value(busy, "bot_postgres_pool_checked_out") == 2
    assert value(busy, "bot_postgres_pool_overflow") == 1  # one beyond the pool's size
    after = await scrape(metrics, engine, redis)
    assert value(after, "bot_postgres_pool_checked_out") == 0
    assert value(after, "bot_postgres_pool_overflow") == 0  # the extra connection closed


async def test_redis_call_errors_are_counted_by_kind(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis, own_redis: EmbeddedRedis
) -> None:
    metrics = Metrics()
    service = await make_service(
        metrics=metrics, redis_url=own_redis.url, redis_breaker_cooldown_seconds=0.3
    )
    guard, client, key = service.cache.guard, service.cache.redis, f"{new_user()}:list"

    def errors() -> dict[str, float]:
        return {kind: value(scraped, "bot_redis_call_errors_total", kind=kind) for kind in KINDS}

    scraped = await scrape(metrics, engine, redis)
    assert set(errors().values()) == {0}
    await guard.run(lambda: client.lpush(key, "x"))
    with pytest.raises(CacheRefused):  # WRONGTYPE: this call's error, Redis still serves
        await guard.run(lambda: client.incr(key))
    await own_redis_configured(client, maxmemory="1", **{"maxmemory-policy": "noeviction"})
    with pytest.raises(CacheUnavailable):  # OOM: a fault of the server, the breaker opens
        await guard.run(lambda: client.set(key + ":s", "v"))
    with pytest.raises(CircuitOpen):
        await guard.run(client.ping)
    await own_redis_configured(client, maxmemory="0")
    await after_the_cooldown(guard, client.ping)  # the probe finds it back
    own_redis.pause()
    try:
        with pytest.raises(CacheUnavailable):  # no answer within REDIS_OP_TIMEOUT_SECONDS
            await guard.run(client.ping)
    finally:
        own_redis.resume()
    own_redis.stop()
    with pytest.raises(CacheUnavailable):
        await after_the_cooldown(guard, client.ping)  # connection refused

    scraped = await scrape(metrics, engine, redis)
    counted = errors()
    assert counted["circuit_open"] >= 1
    assert {k: v for k, v in counted.items() if k != "circuit_open"} == {
        "timeout": 1,
        "connection": 1,
        "fault": 1,
        "refused": 1,
        "other": 0,
    }
    assert value(scraped, "bot_redis_faults_total", reason="oom") == 1


KINDS = ("timeout", "connection", "fault", "refused", "other", "circuit_open")


async def own_redis_configured(client: Redis, **config: str) -> None:
    """CONFIG SET on the test's own Redis, past the guard (as an operator would)."""
    for name, setting in config.items():
        await client.config_set(name, setting)


async def after_the_cooldown(guard: RedisGuard, call: Callable[[], Awaitable[object]]) -> None:
    """`call` through the guard as soon as its breaker lets a probe through."""
    async with asyncio.timeout(10):
        while True:
            try:
                await guard.run(call)
            except CircuitOpen:
                await asyncio.sleep(0.05)  # the cool-down is not over
            else:
                return


async def test_readiness_and_channels_are_gauges_set_at_each_scrape(
    make_service: ServiceFactory, engine: AsyncEngine, own_redis: EmbeddedRedis
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics, redis_url=own_redis.url)
    channel = QueueChannel(Dispatcher(service, metrics))

    scraped = await scrape(metrics, engine, service.cache.redis, [channel])
    assert value(scraped, "bot_channel_connected", channel="queue") == 0
    assert value(scraped, "bot_messages_in_total", channel="queue") == 0  # there from the start
    assert value(scraped, "bot_platform_rate_limited_total", channel="queue") == 0
    assert value(scraped, "bot_dependency_up", dependency="postgres") == 1
    assert value(scraped, "bot_dependency_up", dependency="redis") == 1
    assert value(scraped, "bot_ready") == 0  # the channel is not connected
    channel._connected = True
    scraped = await scrape(metrics, engine, service.cache.redis, [channel])
    assert value(scraped, "bot_channel_connected", channel="queue") == 1
    assert value(scraped, "bot_ready") == 1
    own_redis.stop()
    scraped = await scrape(metrics, engine, service.cache.redis, [channel])
    assert value(scraped, "bot_dependency_up", dependency="redis") == 0
    assert value(scraped, "bot_ready") == 0


# The tallies an earlier /metrics missed, each counted for real.


async def test_a_stale_session_is_counted_on_metrics(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics)
    user = new_user()
    await service.handle(msg(user, "first"))  # the session is cached
    await execute(  # an operator closes the conversation in Postgres, behind the cache
        engine,
        """UPDATE conversations SET is_active = false
           WHERE user_id = (SELECT id FROM users WHERE channel_user_id = :user)""",
        user=user,
    )
    assert value(await scrape(metrics, engine, redis), "bot_stale_sessions_total") == 0
    reply = await service.handle(msg(user, "second"))
    assert reply.text is not None and reply.text.startswith('You said: "second"')
    assert value(await scrape(metrics, engine, redis), "bot_stale_sessions_total") == 1


async def test_a_refused_store_is_counted_on_metrics(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics)
    assert value(await scrape(metrics, engine, redis), "bot_postgres_refusals_total") == 0
    await run_sql(engine, DISK_FULL)  # Postgres refuses this insert, as with a full disk
    try:
        reply = await service.handle(msg(new_user(), "fill the disk"))
    finally:
        await run_sql(engine, NO_DISK_FULL)
    assert reply.text == UNAVAILABLE_TEXT
    scraped = await scrape(metrics, engine, redis)
    assert value(scraped, "bot_postgres_refusals_total") == 1
    assert value(scraped, "bot_postgres_errors_total") == 0


async def test_a_resent_reply_is_counted_on_metrics(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    metrics = Metrics()
    dying = await make_service(**SHORT_LOCK)
    survivor = await make_service(metrics=metrics, **SHORT_LOCK)
    user = new_user()
    event = msg(user, "did you get this?", pid=f"{user}:1")

    async def die(*args: object, **kwargs: object) -> None:
        raise DyingAfterCommit  # committed, then the worker died before sending

    dying.cache.claims.settle = die  # type: ignore[method-assign]
    with pytest.raises(DyingAfterCommit):
        await dying.handle(event)
    assert value(await scrape(metrics, engine, redis), "bot_replies_resent_total") == 0
    redelivered = await asyncio.wait_for(handled(survivor, event), timeout=30)
    assert redelivered.kind is ReplyKind.ANSWER
    assert value(await scrape(metrics, engine, redis), "bot_replies_resent_total") == 1
