"""Two workers with Redis stopped, users writing fast: each reply once, in order (issue 20).

Two worker processes share one Postgres; the Redis they were connected to is stopped
(SIGKILL, or SIGSTOP: hung) before the first message. Each user writes a message every
30-80 ms, message n to worker n % 2 (or, for half of them, two in a row to each),
never waiting for a reply; the responder takes DELAY s, so that a user's messages are
in flight on both workers at once. Without Redis no lock orders a user's messages
across workers: the inbox does (bot/inbox.py): a message waits for the older ones of
its writer still being answered, here or elsewhere, and one that waits too long is
put back behind them for a worker's sweep to answer in order.

Every reply is recorded with the instant it was delivered (writer_process.py). Each
user's replies must have been delivered in the order their messages were received
(one kept before another was handed over is answered first), each once, each on the
context of all answered before it, and Postgres must hold each exchange once, in the
order of the replies.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.domain import ReplyKind
from tests.redis_servers import redis_server
from tests.reliability.conftest import Report
from tests.reliability.load import (
    CONTEXT_MESSAGES,
    Attempt,
    LoadResult,
    assert_nothing_lost,
    check_store,
    finals,
    summarize,
)
from tests.support import assert_in_order, conversation_of, echo, run_together

USERS = 4
PER_USER = 10
GAPS = (0.03, 0.08)  # s between two messages of a user
DELAY = 0.3  # s the responder takes
WORKERS = 2
TIMEOUT = 90.0
CHANNEL = "console"


@dataclass(frozen=True)
class Fault:
    """How Redis is stopped, and how long a message waits for an older one elsewhere."""

    name: str
    signal: signal.Signals
    lock_wait: float  # LOCK_WAIT_SECONDS: the inbox's longest wait, too
    swept: bool  # whether messages are put back, for a sweep to answer


FAULTS = [
    # Every message waits for the older ones: answered where it was received.
    Fault("redis SIGKILL", signal.SIGKILL, 60.0, swept=False),
    # Redis hangs (every call times out), and waits are short: most messages are put
    # back behind an older one and answered by a sweep of either worker.
    Fault("redis SIGSTOP, short waits", signal.SIGSTOP, 1.0, swept=True),
]


def schedule(users: list[str], seed: int) -> list[list[list[Any]]]:
    """Per worker, its messages: [user, number, offset s], each 30-80 ms after the
    user's previous one. Half the users' message n goes to worker n % 2; the other
    half's in pairs (n // 2 % 2), as a load balancer may send two in a row to one
    worker, where they reach the turn's lock in no particular order."""
    rng = random.Random(seed)
    plans: list[list[list[Any]]] = [[] for _ in range(WORKERS)]
    for index, user in enumerate(users):
        at = rng.uniform(0, 0.1)
        for number in range(PER_USER):
            worker = number % WORKERS if index % 2 == 0 else number // 2 % WORKERS
            plans[worker].append([user, number, at])
            at += rng.uniform(*GAPS)
    return plans


def worker_settings(fault: Fault) -> dict[str, str]:
    return {
        "INBOX_LEASE_SECONDS": "2",
        "INBOX_SWEEP_SECONDS": "0.3",
        "LOCK_WAIT_SECONDS": str(fault.lock_wait),
        "REDIS_OP_TIMEOUT_SECONDS": "0.3",
        "REDIS_BREAKER_COOLDOWN_SECONDS": "2",
    }


def run_writers(
    settings: Settings,
    fault: Fault,
    plans: list[list[list[Any]]],
    users: list[str],
    stop: Callable[[], None],
) -> list[dict[str, Any]]:
    """Start the workers, stop Redis once they are ready, let them go; what each did."""
    commands = [
        [
            "tests.reliability.writer_process",
            json.dumps({"schedule": plan, "users": users, "delay": DELAY, "within": TIMEOUT}),
        ]
        for plan in plans
    ]
    env = worker_settings(fault)
    return run_together(settings, commands, TIMEOUT, env=env, before_go=stop)


@dataclass(frozen=True)
class Delivered:
    """One reply a worker delivered: to which message, when, and how it was taken."""

    pid: str
    user: str
    text: str
    reply: str
    kind: ReplyKind
    path: str  # "direct": where it was received; "sweep": put back, then taken
    at: float  # time.monotonic() of its delivery

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivered:
        return cls(**{**data, "kind": ReplyKind(data["kind"])})


@dataclass(frozen=True)
class Received:
    """One message's receipt: its place in the inbox's order, and when it was kept."""

    pid: str
    user: str
    seq: int
    sent: float  # the receipt began (time.monotonic())
    at: float  # it ended: the platform was told the message arrived

    def before(self, other: Received) -> bool:
        """Kept before `other` was even handed over: it must be answered first. Two
        receipts that overlap have no order the inbox can know (each statement's
        snapshot misses the other), so either may go first."""
        return self.at < other.sent


def receipts(done: list[dict[str, Any]]) -> dict[str, Received]:
    """Every message's receipt, over both workers: each kept once."""
    found: dict[str, Received] = {}
    for worker in done:
        for pid, got in worker["received"].items():
            assert got["taken"] and got["seq"] is not None, (pid, got)
            assert pid not in found, f"{pid} received twice"
            user = pid.rsplit(":", 1)[0]
            found[pid] = Received(pid, user, got["seq"], got["sent"], got["at"])
    return found


def overlapped(replies: list[Delivered], received: dict[str, Received]) -> int:
    """Messages received while an older one of their writer was still unanswered."""
    answered_at = {r.pid: r.at for r in replies}
    return sum(
        any(
            o.user == r.user and o.before(r) and answered_at[o.pid] > r.at
            for o in received.values()
        )
        for r in received.values()
    )


def crossed(received: dict[str, Received]) -> int:
    """Messages whose receipts overlapped one sent after them that the inbox numbered
    first: the order between the two is the one they are answered in."""
    return sum(
        any(o.user == r.user and o.sent > r.sent and o.seq < r.seq for o in received.values())
        for r in received.values()
    )


def delivered_by_user(replies: list[Delivered]) -> dict[str, list[Delivered]]:
    by_user: dict[str, list[Delivered]] = defaultdict(list)
    for reply in sorted(replies, key=lambda r: r.at):
        by_user[reply.user].append(reply)
    return by_user


def assert_delivered_in_order(
    by_user: dict[str, list[Delivered]], received: dict[str, Received]
) -> None:
    """Each user's replies, by the instant delivered: a message kept before another was
    handed over is answered before it, and each reply saw all the messages answered
    before it (the echo responder says how many)."""
    for user, theirs in by_user.items():
        for n, reply in enumerate(theirs):
            later = [r.pid for r in theirs[:n] if received[reply.pid].before(received[r.pid])]
            assert not later, f"{reply.pid} was answered after {later}, received after it"
        expected = [echo(r.text, min(2 * n, CONTEXT_MESSAGES)) for n, r in enumerate(theirs)]
        assert [r.reply for r in theirs] == expected, user


async def figures(
    engine: AsyncEngine,
    fault: Fault,
    users: list[str],
    replies: list[Delivered],
    received: dict[str, Received],
    seconds: float,
) -> LoadResult:
    attempts = [
        Attempt(r.pid, r.user, r.text, received[r.pid].at, r.at, r.kind, r.reply) for r in replies
    ]
    store = await check_store(engine, CHANNEL, users, finals(attempts))
    return summarize(
        f"two workers, {fault.name}, fast writers",
        attempts,
        store,
        sent=len(received),
        seconds=seconds,
        fault_ended=None,
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
async def test_fast_writers_on_two_workers_without_redis_are_answered_once_in_order(
    fault: Fault,
    make_settings: Callable[..., Settings],
    engine: AsyncEngine,
    report: Report,
    tmp_path: Path,
) -> None:
    users = [f"fast-{uuid.uuid4().hex[:8]}-{i}" for i in range(USERS)]
    seed = random.randrange(2**32)  # in the figures: a failing schedule can be replayed
    plans = schedule(users, seed)
    with redis_server(tmp_path / "redis") as own:
        settings = make_settings(redis_url=own.url)

        def stop() -> None:
            os.kill(own.process.pid, fault.signal)

        started = time.monotonic()
        done = await asyncio.to_thread(run_writers, settings, fault, plans, users, stop)
        seconds = time.monotonic() - started
    received = receipts(done)
    replies = [Delivered.from_json(r) for worker in done for r in worker["replies"]]
    stats: Counter[str] = sum((Counter(worker["stats"]) for worker in done), Counter())
    result = await figures(engine, fault, users, replies, received, seconds)
    swept = sum(r.path == "sweep" for r in replies)
    report(
        result.noting(
            overlapped=overlapped(replies, received),
            crossed=crossed(received),
            queued=stats["queued"],
            swept=swept,
            turn_conflicts=stats["turn_conflict"],
            without_redis=stats["cache_unavailable"],
            by_worker="/".join(str(len(w["replies"])) for w in done),
            seed=seed,
        )
    )

    assert len(received) == USERS * PER_USER
    assert Counter(r.pid for r in replies) == Counter(list(received)), result.line()  # once
    assert all(r.kind is ReplyKind.ANSWER for r in replies), result.line()
    by_user = delivered_by_user(replies)
    assert_delivered_in_order(by_user, received)
    assert_nothing_lost(result)
    for user in users:
        stored = await conversation_of(engine, user)
        assert_in_order(stored, CONTEXT_MESSAGES)
        assert [t for role, t in stored if role == "user"] == [r.text for r in by_user[user]]
    assert stats["cache_unavailable"] >= USERS * PER_USER  # Redis was out for all of them
    assert overlapped(replies, received) >= USERS * PER_USER // 2  # the replies overlapped
    assert all(w["replies"] for w in done), "one worker answered nothing"
    assert (swept > 0) == fault.swept, result.line()
