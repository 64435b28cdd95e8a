"""Redis killed, or hung, in the middle of a steady load (invariant 4 under load).

Each test owns a real redis-server (the `own_redis` fixture) that it SIGKILLs and
restarts, or SIGSTOPs and SIGCONTs, while simulated users keep talking; Postgres is
the suite's test database. The bot must keep answering (from Postgres), lose and
duplicate nothing, and use the cache again by itself once Redis is back.
"""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ReplyKind
from bot.embedded import EmbeddedRedis
from bot.service import ConversationService
from tests.reliability.conftest import Report
from tests.reliability.load import Load, LoadPlan, assert_nothing_lost, measure, run_with_outage
from tests.support import ServiceFactory

OP_TIMEOUT = 0.5  # REDIS_OP_TIMEOUT_SECONDS
COOLDOWN = 1.0  # REDIS_BREAKER_COOLDOWN_SECONDS
PLAN = LoadPlan(users=30, per_user=8, concurrency=8)
FAULT_AFTER = 2 * PLAN.users  # settled messages before the fault
OUTAGE = 1.5  # seconds Redis stays dead
PAUSE = 4.0  # seconds Redis stays hung
# The longest a message may take while Redis hangs: the budget of the call that finds
# it hung, of the one that finds it still hung after the cool-down, and of one more
# (a refresh after a read that got through), plus Postgres and a loaded machine. A bot
# without the guard would hold messages for the whole pause instead.
HUNG_BOUND = 3 * OP_TIMEOUT + 1.5
assert HUNG_BOUND < PAUSE


async def build(make_service: ServiceFactory, server: EmbeddedRedis) -> ConversationService:
    return await make_service(
        redis_url=server.url,
        redis_op_timeout_seconds=OP_TIMEOUT,
        redis_breaker_cooldown_seconds=COOLDOWN,
        lock_wait_seconds=10,  # a lock left behind shows up as BUSY, not as a long wait
    )


def cache_in_use(service: ConversationService) -> bool:
    return not service.cache.guard.is_open


@pytest.mark.timeout(90)
async def test_redis_killed_mid_load_and_restarted(
    make_service: ServiceFactory, own_redis: EmbeddedRedis, engine: AsyncEngine, report: Report
) -> None:
    service = await build(make_service, own_redis)
    load = Load(service, PLAN, healthy=lambda: cache_in_use(service))

    seconds = await run_with_outage(load, FAULT_AFTER, OUTAGE, own_redis.kill, own_redis.start)
    result = await measure(load, engine, "redis SIGKILL + restart", seconds)
    report(result.noting(from_postgres=service.stats["cache_unavailable"]))

    assert_nothing_lost(result)
    assert result.unavailable == 0, result.line()  # degraded, never stopped
    assert service.stats["cache_unavailable"] > 0  # answered from Postgres meanwhile
    assert result.recovery_seconds is not None, result.line()  # the cache is used again
    assert cache_in_use(service) and service.stats["lock_timeout"] == 0


@pytest.mark.timeout(90)
async def test_redis_hung_mid_load_then_resumed(
    make_service: ServiceFactory, own_redis: EmbeddedRedis, engine: AsyncEngine, report: Report
) -> None:
    service = await build(make_service, own_redis)
    load = Load(service, PLAN, healthy=lambda: cache_in_use(service))

    seconds = await run_with_outage(load, FAULT_AFTER, PAUSE, own_redis.pause, own_redis.resume)
    result = await measure(load, engine, "redis SIGSTOP + SIGCONT", seconds)
    report(result.noting(from_postgres=service.stats["cache_unavailable"]))

    assert_nothing_lost(result)
    assert result.unavailable == 0, result.line()
    assert result.max_latency < HUNG_BOUND, result.line()
    assert load.fault_started is not None and load.fault_ended is not None
    during = [
        a
        for a in load.attempts
        if load.fault_started <= a.started and a.finished <= load.fault_ended
    ]
    assert during and all(a.kind is ReplyKind.ANSWER for a in during)  # from Postgres
    assert service.stats["cache_unavailable"] > 0
    assert result.recovery_seconds is not None, result.line()  # no restart needed
    assert cache_in_use(service) and service.stats["lock_timeout"] == 0
