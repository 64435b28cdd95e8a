"""Two workers (two processes) handed the same platform events, under load: each event
is answered once, by one of them, and stored once (invariant 2 across workers).

Both processes run the same users with the same platform message ids at the same
time, as when a platform redelivers every event to a second worker while the first
is still at it. The one that loses the race must say nothing (DUPLICATE).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.domain import ReplyKind
from tests.reliability.conftest import Report
from tests.reliability.load import (
    Attempt,
    LoadPlan,
    assert_nothing_lost,
    check_store,
    finals,
    summarize,
)
from tests.support import run_together

PLAN = LoadPlan(users=30, per_user=6, concurrency=8, think_seconds=0.0)
WORKERS = 2
TIMEOUT = 60.0


def run_twins(settings: Settings, spec: dict[str, Any]) -> list[list[Attempt]]:
    """Start the workers, let them go at once, and collect each one's attempts."""
    command = ["tests.reliability.worker_process", json.dumps(spec)]
    results = run_together(settings, [command] * WORKERS, TIMEOUT)
    return [[Attempt.from_json(a) for a in result] for result in results]


@pytest.mark.timeout(120)
async def test_two_workers_given_the_same_events_answer_each_once(
    settings: Settings, engine: AsyncEngine, report: Report
) -> None:
    users = [f"rel-{uuid.uuid4().hex[:8]}-{i:02d}" for i in range(PLAN.users)]
    spec = {"plan": dataclasses.asdict(PLAN), "users": users}

    started = time.monotonic()
    per_worker = await asyncio.to_thread(run_twins, settings, spec)
    seconds = time.monotonic() - started
    attempts = [a for own in per_worker for a in own]
    pids = {a.pid for a in attempts}
    store = await check_store(engine, PLAN.channel, users, finals(attempts))
    result = summarize(
        "two workers, same events",
        attempts,
        store,
        sent=len(pids),
        seconds=seconds,
        fault_ended=None,
    )
    answered_by = [sum(a.kind is ReplyKind.ANSWER for a in own) for own in per_worker]
    report(result.noting(answered_by_worker="/".join(map(str, answered_by))))

    assert len(pids) == PLAN.users * PLAN.per_user
    assert all(len(own) == len(pids) for own in per_worker)  # each worker saw every event
    kinds = Counter((a.pid, a.kind) for a in attempts)
    assert all(kinds[pid, ReplyKind.ANSWER] == 1 for pid in pids), result.line()
    assert all(kinds[pid, ReplyKind.DUPLICATE] == 1 for pid in pids), result.line()
    assert_nothing_lost(result)
    assert all(answered_by), "one worker answered nothing: the race never happened"
