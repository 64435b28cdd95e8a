"""`bot run --channels slack` SIGKILLed right after acknowledging events whose replies
are still being written: every acknowledged event is answered by the next worker, once,
in its thread, in order per writer and thread, and stored once (issue 20, "Done when",
for Slack over HTTP and over Socket Mode).

Real `bot run` processes on the local fake Slack of bot/emulators/slack_api.py (signed
Events API posts to the worker's SLACK_PORT, or envelopes over its Socket Mode
websocket) answering through the local LLM server, slow enough that a writer's events
queue up behind their first reply. Half the writers write in a DM, half mention the bot
in a thread of a channel. Each writer sends FIRST messages to the first worker, each
once the previous one is acknowledged; the worker is killed in a quiet moment (no reply
being sent to Slack: one sent there an instant before the kill, not yet marked
delivered, would be sent again by design); a second worker starts, and each writer
sends one message more, which must wait for the ones the dead worker left.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.emulators.llm_api import LLMServer, Step
from bot.emulators.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    FakeSlack,
    event_envelope,
    sign,
)
from tests.reliability.conftest import FIGURES
from tests.reliability.telegram_bot import Worker
from tests.support import fetch, free_port, messages_of, until, worker_env

WRITERS = 12  # half in a DM each, half in a thread each of one channel
FIRST = 5  # messages of each writer acknowledged by the first worker
LLM_DELAY = 1.0  # s per reply: a writer's later events wait behind its first
QUIET = 0.3  # s without a reply sent to Slack before the kill
LEASE = "2"  # INBOX_LEASE_SECONDS: a dead worker's events lapse soon
SWEEP = "0.5"  # INBOX_SWEEP_SECONDS
CHANNEL = "C0CHANNEL12"
ANSWERED_WITHIN = 60.0
_TS = itertools.count(100)


@dataclass
class Sent:
    """One event: what was written, when Slack was told it arrived, and where."""

    event_id: str
    text: str
    ts: str
    acked_at: float


@dataclass
class Writer:
    user: str
    channel: str
    parent: str | None  # the thread's ts in a channel; None in a DM
    sent: list[Sent] = field(default_factory=list)

    def event(self, text: str) -> dict[str, Any]:
        ts = f"{int(time.time())}.{next(_TS):06d}"
        if self.parent is None:
            return {"type": "message", "channel_type": "im", "user": self.user,
                    "text": text, "channel": self.channel, "ts": ts}  # fmt: skip
        return {"type": "app_mention", "user": self.user, "text": f"<@{BOT_USER_ID}> {text}",
                "channel": self.channel, "ts": ts, "thread_ts": self.parent}  # fmt: skip

    def thread_of(self, sent: Sent) -> str:
        """The thread its answer goes in: the DM message's own, or the channel's thread."""
        return self.parent or sent.ts


def new_writers() -> list[Writer]:
    writers = []
    for n in range(WRITERS):
        user = "U" + uuid.uuid4().hex[:10].upper()
        if n % 2:
            writers.append(Writer(user, CHANNEL, f"{int(time.time())}.{next(_TS):06d}"))
        else:
            writers.append(Writer(user, "D" + uuid.uuid4().hex[:10].upper(), None))
    return writers


class SlackWorker(Worker):
    """A `bot run --channels slack` process; its log goes to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(env, log, "slack")

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SLACK_PORT']}/slack/events"


def worker_environment(
    settings: Settings, slack: FakeSlack, llm: LLMServer, socket: bool
) -> dict[str, str]:
    mode = {"SLACK_APP_TOKEN": APP_TOKEN} if socket else {"SLACK_SIGNING_SECRET": SIGNING_SECRET}
    return worker_env(settings) | mode | {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_BASE_URL": slack.api_url,
        "SLACK_LISTEN": "127.0.0.1",
        "SLACK_PORT": str(free_port()),
        "LLM_BASE_URL": llm.url,
        "LLM_MAX_CONCURRENCY": "32",  # every writer's reply in flight at once
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "INBOX_LEASE_SECONDS": LEASE,
        "INBOX_SWEEP_SECONDS": SWEEP,
        # The dead worker's Redis turns free soon, as its inbox leases do.
        "LOCK_TTL_SECONDS": "3",
        "DELIVERY_LEASE_SECONDS": "3",
    }  # fmt: skip


async def post_signed(url: str, body: dict[str, Any]) -> int:
    raw = json.dumps(body).encode()
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": str(stamp),
        "X-Slack-Signature": sign(raw, stamp),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=raw, headers=headers) as r,
    ):
        return r.status


async def until_listening(worker: SlackWorker) -> None:
    """Until the worker answers Slack's url_verification (HTTP mode)."""
    challenge = {"token": "t", "challenge": "ready?", "type": "url_verification"}
    async with asyncio.timeout(30):
        while True:
            try:
                if await post_signed(worker.events_url, challenge) == 200:
                    return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


async def until_ready(worker: SlackWorker, slack: FakeSlack, socket: bool) -> None:
    if socket:
        await until(lambda: slack.socket_open, within=30, what="the worker's websocket")
    else:
        await until_listening(worker)


async def send(
    writer: Writer, text: str, slack: FakeSlack, worker: SlackWorker, socket: bool
) -> None:
    """Deliver one event as Slack does, and note it once acknowledged."""
    event = writer.event(text)
    body = event_envelope(event)
    if socket:
        envelope = await slack.push(body)
        await until(lambda: envelope in {a.get("envelope_id") for a in slack.acks})
    else:
        assert await post_signed(worker.events_url, body) == 200
    writer.sent.append(Sent(body["event_id"], text, event["ts"], time.monotonic()))


def reply_to(text: str) -> str:
    """What the local LLM answers; in a shared thread the message is "name: text"."""
    return f"LLM reply to: {text}"


def answers(slack: FakeSlack, text: str) -> list[tuple[float, str, str | None]]:
    """The complete answers to `text` on Slack: (time written, channel, thread)."""
    return [
        (m.writes[-1][1], m.channel, m.thread_ts)
        for m in list(slack.messages.values())
        if m.complete and (m.text == reply_to(text) or m.text.endswith(f": {text}"))
    ]


def last_activity(slack: FakeSlack, llm: LLMServer) -> float:
    """When a reply was last written (LLM) or sent (Slack)."""
    times = [write[1] for write in slack.writes()[-1:]] + [t for t, _ in llm.pieces_sent[-1:]]
    return max(times, default=0.0)


async def until_quiet_with_replies_pending(
    slack: FakeSlack, llm: LLMServer, writers: Sequence[Writer]
) -> None:
    """Until the first replies are out, others are being written by the LLM, and nothing
    was sent to Slack for QUIET s: the worker holds acknowledged events, none of them
    on its way to Slack."""

    def ready() -> bool:
        answered = sum(bool(answers(slack, s.text)) for w in writers for s in w.sent)
        quiet = time.monotonic() - last_activity(slack, llm) >= QUIET
        return answered >= len(writers) and llm.in_flight >= 3 and quiet

    await until(ready, within=30, what="a quiet moment with replies being written")


async def inbox_left(engine: AsyncEngine, event_ids: list[str]) -> int:
    rows = await fetch(
        engine,
        "SELECT count(*) AS n FROM inbox WHERE channel_type = 'slack' "
        "AND platform_message_id = ANY(:ids)",
        ids=event_ids,
    )
    return int(rows[0].n)


async def stored_in_order(engine: AsyncEngine, writer: Writer) -> bool:
    """The writer's messages stored once each, in the order sent, each followed by its
    reply."""
    rows = [r for r in await messages_of(engine, writer.user) if r.role in ("user", "assistant")]
    users = [r.platform_message_id for r in rows if r.role == "user"]
    pairs = itertools.pairwise(rows)
    replied = all(
        b.role == "assistant" and (b.content == reply_to(a.content) or b.content.endswith(
            f": {a.content}"))
        for a, b in pairs if a.role == "user"
    )  # fmt: skip
    ended = bool(rows) and rows[-1].role == "assistant"
    return users == [s.event_id for s in writer.sent] and replied and ended


@pytest.fixture
def llm(llm: LLMServer) -> LLMServer:
    llm.default = Step(delay=LLM_DELAY)
    return llm


@pytest.mark.timeout(180)
@pytest.mark.parametrize("socket", [False, True], ids=["http", "socket-mode"])
async def test_sigkill_after_the_ack_every_slack_event_is_answered_once_in_order(
    settings: Settings,
    engine: AsyncEngine,
    slack: FakeSlack,
    llm: LLMServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    socket: bool,
) -> None:
    writers = new_writers()
    first = SlackWorker(worker_environment(settings, slack, llm, socket), tmp_path / "first.log")
    second = SlackWorker(worker_environment(settings, slack, llm, socket), tmp_path / "second.log")
    started = time.monotonic()
    try:
        await first.start()
        await until_ready(first, slack, socket)
        for k in range(FIRST):  # each writer: a message once the one before is acked
            await asyncio.gather(
                *(send(w, f"message {k} from {w.user}", slack, first, socket) for w in writers)
            )
        await until_quiet_with_replies_pending(slack, llm, writers)
        await first.kill()
        killed_at = time.monotonic()
        every = [s for w in writers for s in w.sent]
        left = [s for s in every if not answers(slack, s.text)]  # acked, not answered
        await until(lambda: not slack.socket_open)  # the dead worker's websocket is gone

        await second.start()
        await until_ready(second, slack, socket)
        await asyncio.gather(
            *(send(w, f"message {FIRST} from {w.user}", slack, second, socket) for w in writers)
        )
        every = [s for w in writers for s in w.sent]
        await until(
            lambda: all(answers(slack, s.text) for s in every),
            within=ANSWERED_WITHIN,
            what="an answer to every acknowledged event",
        )
        ids = [s.event_id for s in every]
        async with asyncio.timeout(10):  # all delivered: nothing left to answer again
            while await inbox_left(engine, ids):  # noqa: ASYNC110 - Postgres state
                await asyncio.sleep(0.05)
        second_exit = await second.stop()
    finally:
        await first.kill()
        await second.kill()

    found = {s.event_id: answers(slack, s.text) for s in every}
    duplicates = sum(len(a) - 1 for a in found.values())
    delays = [found[s.event_id][0][0] - s.acked_at for s in every]
    misplaced = [
        s.text
        for w in writers
        for s in w.sent
        if {(c, t) for _, c, t in found[s.event_id]} != {(w.channel, w.thread_of(s))}
    ]
    disordered = [
        w.user
        for w in writers
        if [found[s.event_id][0][0] for s in w.sent]
        != sorted(found[s.event_id][0][0] for s in w.sent)
    ]
    stored_wrong = [w.user for w in writers if not await stored_in_order(engine, w)]
    first_resumed = min(found[s.event_id][0][0] for s in left) - killed_at
    others = [m.text for m in slack.messages.values() if not m.text.startswith("LLM reply to")]
    line = (
        f"slack {'socket-mode' if socket else 'http'} SIGKILL after the ack: "
        f"sent={len(every)} acknowledged={len(every)} in_hand_at_kill={len(left)} "
        f"answered={sum(bool(a) for a in found.values())} duplicates={duplicates} "
        f"other_posts={len(others)} misplaced={len(misplaced)} "
        f"out_of_order={len(disordered)} stored_wrong={len(stored_wrong)} "
        f"first_answer_after_kill={first_resumed:.2f}s max_delay={max(delays):.2f}s "
        f"(lease {LEASE}s, sweep {SWEEP}s, LLM {LLM_DELAY}s a reply) "
        f"after_kill={time.monotonic() - killed_at:.1f}s seconds={time.monotonic() - started:.1f}"
    )
    print(f"\n{line}")
    request.config.stash.setdefault(FIGURES, []).append(line)

    assert second_exit == 0, (tmp_path / "second.log").read_text()
    assert len(left) >= WRITERS, line  # the dead worker held acknowledged, unanswered events
    assert all(found.values()), line
    assert duplicates == 0, line
    assert not others, others  # nothing but answers: no reply was left half-streamed
    assert not misplaced, misplaced
    assert not disordered, line
    assert not stored_wrong, line
