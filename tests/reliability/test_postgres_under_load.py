"""Postgres restarted, or its connections killed, in the middle of a steady load
(invariants 2 and 5 under load).

The bot works in a database of these scenarios on the fault tests' own Postgres
server (`fault_postgres`, its own port and data directory), which the tests stop and
start, or whose connections they terminate, while simulated users keep talking; Redis
is the suite's test server. What cannot be stored is told (UNAVAILABLE) and
redelivered; nothing is half-stored, lost or stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.embedded import EmbeddedPostgres
from tests.reliability.conftest import OWNED_DATABASE, Report
from tests.reliability.load import (
    Load,
    LoadPlan,
    assert_nothing_lost,
    measure,
    run_with_fault,
    run_with_outage,
)
from tests.support import FAST_POSTGRES, ServiceFactory, terminate_backends

pytestmark = pytest.mark.usefixtures("fault_postgres_restored")
PLAN = LoadPlan(users=30, per_user=8, concurrency=8)
FAULT_AFTER = 2 * PLAN.users  # settled messages before the fault
DOWN = 1.0  # seconds between the end of the stop and the start
KILLING = 2.0  # seconds during which connections are terminated
KILL_EVERY = 0.2
# The longest one delivery may take while Postgres is away: the retry deadline, the
# attempt running when it passes (a connect, then a statement), and a loaded machine.
UNAVAILABLE_BOUND = (
    FAST_POSTGRES["db_retry_deadline_seconds"]
    + FAST_POSTGRES["db_connect_timeout_seconds"]
    + FAST_POSTGRES["db_command_timeout_seconds"]
    + 1.5
)


@pytest.mark.timeout(90)
async def test_postgres_restarted_mid_load(
    make_service: ServiceFactory,
    fault_postgres: EmbeddedPostgres,
    owned_pg_url: str,
    owned_pg: AsyncEngine,
    report: Report,
) -> None:
    service = await make_service(database_url=owned_pg_url, **FAST_POSTGRES)
    load = Load(service, PLAN)

    seconds = await run_with_outage(
        load, FAULT_AFTER, DOWN, fault_postgres.stop, fault_postgres.start
    )
    result = await measure(load, owned_pg, "postgres restart", seconds)
    report(result.noting(store_unavailable=service.stats["store_unavailable"]))

    assert_nothing_lost(result)  # the redelivered messages stored once, with their reply
    assert result.unavailable == service.stats["store_unavailable"], result.line()
    assert result.max_latency < UNAVAILABLE_BOUND, result.line()  # told in bounded time
    assert result.recovery_seconds is not None, result.line()


@pytest.mark.timeout(90)
async def test_connections_terminated_mid_load(
    make_service: ServiceFactory,
    fault_postgres: EmbeddedPostgres,
    owned_pg_url: str,
    owned_pg: AsyncEngine,
    report: Report,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = f"reliability-{uuid.uuid4().hex[:8]}"
    service = await make_service(
        database_url=owned_pg_url, db_application_name=app, **FAST_POSTGRES
    )
    load = Load(service, PLAN)
    terminated: list[int] = []
    caplog.set_level(logging.WARNING, logger="bot.store.retry")

    async def terminate_repeatedly() -> None:
        await load.until_settled(FAULT_AFTER)
        load.fault_start()
        loop = asyncio.get_running_loop()
        until = loop.time() + KILLING
        while loop.time() < until:
            terminated.append(await terminate_backends(fault_postgres.url, OWNED_DATABASE, app))
            await asyncio.sleep(KILL_EVERY)
        load.fault_end()

    seconds = await run_with_fault(load, terminate_repeatedly)
    result = await measure(load, owned_pg, "postgres pg_terminate_backend", seconds)
    retried = [r for r in caplog.records if r.name == "bot.store.retry"]
    report(result.noting(terminated=sum(terminated), retried=len(retried)))

    assert sum(terminated) > 0
    assert retried, "no write was retried: the terminations missed the load"
    assert_nothing_lost(result)  # no message half-stored, no reply for one not stored
    assert result.max_latency < UNAVAILABLE_BOUND, result.line()
    assert result.recovery_seconds is not None, result.line()
