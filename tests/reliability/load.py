"""Simulated users under a fault, and what every reliability scenario counts.

Each user sends its messages one after another (the next only once the previous one
is settled and the user has thought a moment, like a person), `concurrency` users at
a time, every message with a platform message id. Under a fault the users go on
until a while after the fault has ended, so that the recovery is seen.

A message told UNAVAILABLE (Postgres could not store it, or the user's lock stayed
busy) is delivered again after a pause, as a platform redelivers or a user retries,
until it is answered or the load's deadline passes. An apology for a failed
responder is final: the message was stored, and a redelivery would be a duplicate.

At the end `measure` compares what the users were told with what Postgres holds.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import IncomingMessage, ReplyKind
from bot.service import RESPONDER_FAILED_TEXT, ConversationService
from tests.support import fetch, handled

CONTEXT_MESSAGES = 20  # the default CONTEXT_MESSAGES: what the echo responder can see
_ECHO_EARLIER = re.compile(r"\((\d+) earlier messages? in my context")


@dataclass(frozen=True, slots=True)
class LoadPlan:
    users: int = 30
    per_user: int = 8  # at least; under a fault, until `after_fault_seconds` after it
    concurrency: int = 8
    think_seconds: float = 0.25  # a user's pause between a reply and their next message
    redelivery_seconds: float = 0.2  # before a message told UNAVAILABLE comes again
    after_fault_seconds: float = 2.0
    deadline_seconds: float = 60.0  # for the whole load, the fault included
    channel: str = "console"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery of one message and the reply it got."""

    pid: str
    user: str
    text: str
    started: float  # time.monotonic()
    finished: float
    kind: ReplyKind
    reply: str | None
    healthy: bool = True  # the scenario's health check right after the reply

    @property
    def latency(self) -> float:
        return self.finished - self.started

    @property
    def apology(self) -> bool:
        """The responder failed: the message is stored without a reply, and told so."""
        return self.kind is ReplyKind.FAILED and self.reply == RESPONDER_FAILED_TEXT

    @property
    def redeliver(self) -> bool:
        """Nothing was stored: the platform (or the user) sends it again."""
        return self.kind is ReplyKind.UNAVAILABLE and not self.apology

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "user": self.user,
            "text": self.text,
            "started": self.started,
            "finished": self.finished,
            "kind": self.kind.value,
            "reply": self.reply,
            "healthy": self.healthy,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        return cls(**{**data, "kind": ReplyKind(data["kind"])})


class Load:
    """Runs a plan's users against a service, as an adapter does (each reply then
    delivered), and records every attempt."""

    def __init__(
        self,
        service: ConversationService,
        plan: LoadPlan,
        *,
        users: Sequence[str] | None = None,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.service = service
        self.plan = plan
        prefix = f"rel-{uuid.uuid4().hex[:8]}"
        self.users = list(users or [f"{prefix}-{i:02d}" for i in range(plan.users)])
        self.healthy = healthy
        self.attempts: list[Attempt] = []
        self.sent: set[str] = set()  # platform message ids delivered at least once
        self.fault_started: float | None = None
        self.fault_ended: float | None = None
        self.fault_expected = False  # set by run_with_fault: go on until after its end
        self.settled = 0  # messages answered, apologized for or declared a duplicate
        self._slots = asyncio.Semaphore(plan.concurrency)

    def fault_start(self) -> None:
        self.fault_started = time.monotonic()

    def fault_end(self) -> None:
        self.fault_ended = time.monotonic()

    def fault_done(self, injected: asyncio.Task[None]) -> None:
        # A fault that failed before its end must not keep the users going until the deadline.
        if injected.cancelled() or injected.exception() is not None:
            self.fault_expected = False

    async def until_settled(self, count: int, within: float = 30.0) -> None:
        """Wait until `count` messages are settled (to inject a fault mid-load)."""
        async with asyncio.timeout(within):
            while self.settled < count:  # noqa: ASYNC110 - counted by the users' tasks
                await asyncio.sleep(0.01)

    async def run(self) -> float:
        """Every user's messages, within the deadline; returns the seconds it took.

        Users still busy at the deadline are cancelled: their last messages count as
        unresolved in the result, which fails the invariants.
        """
        started = time.monotonic()
        tasks = [asyncio.create_task(self._user(user)) for user in self.users]
        _, pending = await asyncio.wait(tasks, timeout=self.plan.deadline_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        return time.monotonic() - started

    async def _user(self, user: str) -> None:
        number = 0
        while number < self.plan.per_user or self._fault_pending():
            pid = f"{user}:{number}"
            text = f"message {number} from {user}"
            self.sent.add(pid)
            await self._deliver(IncomingMessage(self.plan.channel, user, text, user, pid))
            await asyncio.sleep(self.plan.think_seconds)
            number += 1

    def _fault_pending(self) -> bool:
        """Whether a fault is still to come, under way, or ended only just."""
        if not self.fault_expected:
            return False
        ended = self.fault_ended
        return ended is None or time.monotonic() < ended + self.plan.after_fault_seconds

    async def _deliver(self, message: IncomingMessage) -> None:
        while True:
            attempt = await self._attempt(message)
            if not attempt.redeliver:
                self.settled += 1
                return
            await asyncio.sleep(self.plan.redelivery_seconds)

    async def _attempt(self, message: IncomingMessage) -> Attempt:
        async with self._slots:
            started = time.monotonic()
            reply = await handled(self.service, message)
            finished = time.monotonic()
        assert message.platform_message_id is not None
        attempt = Attempt(
            message.platform_message_id,
            message.channel_user_id,
            message.text,
            started,
            finished,
            reply.kind,
            reply.text,
            self.healthy(),
        )
        self.attempts.append(attempt)
        return attempt


def finals(attempts: Iterable[Attempt]) -> dict[str, Attempt]:
    """What the user of each message was finally told: its answer (or apology) if any
    delivery got one, else its last reply (DUPLICATE or UNAVAILABLE)."""
    told: dict[str, Attempt] = {}
    for attempt in sorted(attempts, key=lambda a: (_weight(a), a.finished)):
        told[attempt.pid] = attempt
    return told


def _weight(attempt: Attempt) -> int:
    if attempt.redeliver:
        return 0
    return 1 if attempt.kind is ReplyKind.DUPLICATE else 2


async def run_with_fault(load: Load, fault: Callable[[], Coroutine[Any, Any, None]]) -> float:
    """Run the load with `fault` beside it; returns the load's seconds.

    The fault waits for its moment (`load.until_settled`), marks its window with
    `load.fault_start()` / `load.fault_end()` and must undo itself in any case.
    """
    load.fault_expected = True
    injected = asyncio.create_task(fault())
    injected.add_done_callback(load.fault_done)
    try:
        seconds = await load.run()
    finally:
        if not injected.done():
            injected.cancel()
        await asyncio.wait([injected])
    assert not injected.cancelled(), "the load ended before the fault did"
    injected.result()  # raise what went wrong while injecting
    assert load.fault_ended is not None, "the fault never marked its end"
    after = [a for a in load.attempts if a.started >= load.fault_ended]
    assert after, "the load ended before the fault did: give the users more messages"
    return seconds


async def run_with_outage(
    load: Load, after: int, seconds: float, begin: Callable[[], object], end: Callable[[], object]
) -> float:
    """`run_with_fault` with an outage: once `after` messages are settled, `begin` it, hold
    it for `seconds`, then `end` it whatever happened. Both run in a thread, as stopping or
    starting a server blocks."""

    async def outage() -> None:
        await load.until_settled(after)
        load.fault_start()
        try:
            await asyncio.to_thread(begin)
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(end)
            load.fault_end()

    return await run_with_fault(load, outage)


# -- what Postgres holds ------------------------------------------------------------------

_STORED = """
SELECT m.role, m.content, m.platform_message_id AS pid,
       lead(m.role) OVER w AS next_role, lead(m.content) OVER w AS next_content,
       lag(m.role) OVER w AS previous_role,
       row_number() OVER w - 1 AS earlier
FROM messages m
JOIN conversations c ON c.id = m.conversation_id
JOIN users u ON u.id = c.user_id
WHERE u.channel_type = :channel AND u.channel_user_id = ANY(:users)
WINDOW w AS (PARTITION BY m.conversation_id ORDER BY m.timestamp, m.role DESC)
"""


@dataclass(frozen=True, slots=True)
class StoreCheck:
    stored_user: int
    stored_replies: int
    duplicates: int  # platform message ids stored more than once
    lost: int  # answered (or apologized for) but not stored as the user was told
    phantom: int  # stored, though the user was never given its answer
    orphan_replies: int  # reply rows with no user message right before them
    context_errors: int  # echo answers that saw another context than Postgres holds


async def check_store(
    engine: AsyncEngine, channel: str, users: Sequence[str], told: dict[str, Attempt]
) -> StoreCheck:
    rows = await fetch(engine, _STORED, channel=channel, users=list(users))
    mine = [r for r in rows if r.role == "user"]
    by_pid = {r.pid: r for r in mine}
    counts = Counter(r.pid for r in mine)
    lost = phantom = context_errors = 0
    for pid, attempt in told.items():
        row = by_pid.get(pid)
        if row is None:
            lost += attempt.kind is ReplyKind.ANSWER or attempt.apology
        elif attempt.kind is ReplyKind.ANSWER:
            lost += (row.next_role, row.next_content) != ("assistant", attempt.reply)
            context_errors += not _saw_context(attempt, row.earlier)
        elif attempt.apology:
            lost += row.next_role == "assistant"  # an apology stores no reply
        else:
            phantom += 1  # told UNAVAILABLE (or nothing, a DUPLICATE), yet stored
    return StoreCheck(
        stored_user=len(mine),
        stored_replies=sum(1 for r in rows if r.role == "assistant"),
        duplicates=sum(1 for n in counts.values() if n > 1),
        lost=lost,
        phantom=phantom,
        orphan_replies=sum(1 for r in rows if r.role == "assistant" and r.previous_role != "user"),
        context_errors=context_errors,
    )


def _saw_context(attempt: Attempt, earlier: int) -> bool:
    """Whether an echo answer saw the messages Postgres holds before it (capped)."""
    found = _ECHO_EARLIER.search(attempt.reply or "")
    return found is None or int(found.group(1)) == min(earlier, CONTEXT_MESSAGES)


# -- the figures ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadResult:
    scenario: str
    sent: int  # distinct messages (platform message ids)
    attempts: int  # deliveries, redeliveries included
    answered: int  # messages finally answered
    unavailable: int  # UNAVAILABLE replies shown (each asked the user to try again)
    apologies: int  # responder failures told to the user
    duplicate_replies: int  # deliveries answered DUPLICATE (said nothing)
    unresolved: int  # messages never settled within the deadline
    store: StoreCheck
    recovery_seconds: float | None  # fault end -> first healthy answer
    max_latency: float
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    def noting(self, **notes: Any) -> LoadResult:
        """The result with scenario-specific figures added to its line."""
        return replace(self, notes={**self.notes, **notes})

    def line(self) -> str:
        recovery = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.2f}s"
        s = self.store
        extra = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"{self.scenario}: sent={self.sent} attempts={self.attempts} "
            f"answered={self.answered} unavailable={self.unavailable} "
            f"apologies={self.apologies} duplicate_replies={self.duplicate_replies} "
            f"stored_user={s.stored_user} stored_replies={s.stored_replies} "
            f"duplicates={s.duplicates} lost={s.lost} phantom={s.phantom} "
            f"orphans={s.orphan_replies} context_errors={s.context_errors} "
            f"recovery={recovery} max_latency={self.max_latency:.2f}s "
            f"seconds={self.seconds:.1f}{extra}"
        )


def summarize(
    scenario: str,
    attempts: Sequence[Attempt],
    store: StoreCheck,
    *,
    sent: int,
    seconds: float,
    fault_ended: float | None,
    recovery_users: Iterable[str] | None = None,
) -> LoadResult:
    told = finals(attempts)
    return LoadResult(
        scenario=scenario,
        sent=sent,
        attempts=len(attempts),
        answered=sum(1 for a in told.values() if a.kind is ReplyKind.ANSWER),
        unavailable=sum(1 for a in attempts if a.redeliver),
        apologies=sum(1 for a in attempts if a.apology),
        duplicate_replies=sum(1 for a in attempts if a.kind is ReplyKind.DUPLICATE),
        unresolved=sent - sum(1 for a in told.values() if not a.redeliver),
        store=store,
        recovery_seconds=recovery(attempts, fault_ended, recovery_users),
        max_latency=max((a.latency for a in attempts), default=0.0),
        seconds=seconds,
    )


def recovery(
    attempts: Iterable[Attempt], fault_ended: float | None, users: Iterable[str] | None = None
) -> float | None:
    """Seconds from the fault's end to the first healthy answer after it."""
    if fault_ended is None:
        return None
    wanted = None if users is None else set(users)
    after = [
        a.finished
        for a in attempts
        if a.finished >= fault_ended
        and a.kind is ReplyKind.ANSWER
        and a.healthy
        and (wanted is None or a.user in wanted)
    ]
    return min(after) - fault_ended if after else None


async def measure(
    load: Load,
    engine: AsyncEngine,
    scenario: str,
    seconds: float,
    recovery_users: Iterable[str] | None = None,
) -> LoadResult:
    told = finals(load.attempts)
    store = await check_store(engine, load.plan.channel, load.users, told)
    return summarize(
        scenario,
        load.attempts,
        store,
        sent=len(load.sent),
        seconds=seconds,
        fault_ended=load.fault_ended,
        recovery_users=recovery_users,
    )


def assert_nothing_lost(result: LoadResult) -> None:
    """The invariants every scenario holds: each message settled, stored exactly once
    with its reply as told, no reply without its message, nothing stored untold."""
    s = result.store
    assert result.unresolved == 0, result.line()
    assert s.duplicates == 0, result.line()
    assert s.lost == 0, result.line()
    assert s.phantom == 0, result.line()
    assert s.orphan_replies == 0, result.line()
    assert s.context_errors == 0, result.line()
    assert s.stored_user == result.sent, result.line()
    assert s.stored_replies == result.answered, result.line()
    assert result.answered + result.apologies == result.sent, result.line()
