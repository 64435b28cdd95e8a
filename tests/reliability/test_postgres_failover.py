"""A Postgres primary with a streaming standby of the test's own (tests/pg_servers.py); the
bot's DATABASE_URL names both in libpq's form, with target_session_attrs=read-write.
While simulated users write, the primary is stopped (`pg_ctl stop -m immediate`: its
connections drop as in a crash) and, after a while without any primary, the standby is
promoted (as a failover manager would).

Nothing acknowledged is lost (every answer a user got is on the promoted server, with
its message) and nothing is stored twice; the bot finds the new primary by itself, with
no restart; and users are told "can't answer" only while there is no primary. Two
failovers: a slow one, longer than the retries wait, whose users in flight are told; and
one within the retry deadline, which nobody notices.

The standby is synchronous (synchronous_standby_names on the primary): with an
asynchronous one, the last commits the primary acknowledged before dying may never
reach the standby, and a failover loses them (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bot.domain import ReplyKind
from bot.service import UNAVAILABLE_TEXT
from tests.conftest import create_migrated_database
from tests.pg_servers import PgServer, primary_and_replica, query, wait_caught_up, wait_writable
from tests.reliability.conftest import Report
from tests.reliability.load import (
    Attempt,
    Load,
    LoadPlan,
    assert_nothing_lost,
    measure,
    run_with_fault,
)
from tests.support import FAST_POSTGRES, ServiceFactory, engine_on

log = logging.getLogger(__name__)
pytestmark = pytest.mark.timeout(120)

DATABASE = "bot_failover"
PLAN = LoadPlan(users=12, per_user=8, concurrency=8)
FAULT_AFTER = 3 * PLAN.users  # settled messages before the primary is stopped
# Longer than the retry deadline (2 s) and the backoff sleep that may overrun it (at most
# 2 s): some messages give up while there is no primary; their users must be told, and
# only theirs.
SLOW = 5.0
# Well within the retry deadline: the messages in flight wait for the new primary.
FAST = 0.5


@dataclass
class Failover:
    """When the primary went away and when the promoted standby took writes."""

    stopped: float = 0.0  # time.monotonic()
    writable: float = 0.0


@pytest.fixture
async def servers() -> AsyncIterator[tuple[PgServer, PgServer]]:
    async with primary_and_replica(synchronous=True) as pair:
        primary, replica = pair
        await create_migrated_database(primary.url(), DATABASE)
        await wait_caught_up(primary, replica)
        yield pair


def failover_url(primary: PgServer, replica: PgServer) -> str:
    """DATABASE_URL in libpq's form: both servers, the writable one wanted."""
    hosts = f"{primary.address},{replica.address}"
    return f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=read-write"


@pytest.mark.parametrize("no_primary", [SLOW, FAST], ids=["slow", "fast"])
async def test_primary_stopped_and_standby_promoted_under_load(
    servers: tuple[PgServer, PgServer],
    make_service: ServiceFactory,
    report: Report,
    no_primary: float,
) -> None:
    primary, replica = servers
    service = await make_service(
        database_url=failover_url(primary, replica),
        db_application_name=f"failover-{uuid.uuid4().hex[:8]}",
        **FAST_POSTGRES,
    )
    load = Load(service, PLAN)
    failover = Failover()

    async def fail_over() -> None:
        await load.until_settled(FAULT_AFTER)
        load.fault_start()
        try:
            await asyncio.to_thread(primary.stop)
            failover.stopped = time.monotonic()
            await asyncio.sleep(no_primary)
        finally:
            await asyncio.to_thread(replica.promote)
            await wait_writable(replica)
            failover.writable = time.monotonic()
            load.fault_end()

    seconds = await run_with_fault(load, fail_over)
    async with engine_on(replica.url(DATABASE)) as promoted:
        scenario = f"postgres failover ({no_primary:g} s without a primary)"
        result = await measure(load, promoted, scenario, seconds)
    without_primary = failover.writable - failover.stopped
    report(result.noting(without_primary=f"{without_primary:.2f}s"))

    assert not primary.running and await query(replica, "SELECT NOT pg_is_in_recovery()")
    assert_nothing_lost(result)  # on the promoted server: every answer, once, as told
    refused = [a for a in load.attempts if a.redeliver]
    if no_primary == SLOW:
        assert refused, "no message was refused: the outage was not held long enough"
    else:
        assert refused == [], "a failover within the retry deadline was told to users"
    assert all(a.reply == UNAVAILABLE_TEXT for a in refused), refused
    assert all(_while_no_primary(a, failover) for a in refused), (failover, refused)
    after = [a for a in load.attempts if a.started >= failover.writable]
    assert after and all(a.kind is ReplyKind.ANSWER for a in after), result.line()
    assert result.recovery_seconds is not None and result.recovery_seconds < 5, result.line()
    log.warning(
        "postgres failover: %.2f s without a primary, %d deliveries told UNAVAILABLE, first "
        "answer %.2f s after the promotion",
        without_primary,
        len(refused),
        result.recovery_seconds,
    )


def _while_no_primary(attempt: Attempt, failover: Failover) -> bool:
    """Whether a delivery was under way at some moment when no server took writes."""
    return attempt.started < failover.writable and attempt.finished > failover.stopped
