"""The durable inbox on Telegram, with real `bot run --channels telegram` processes on
the local Bot API and LLM server (issue 20, "Done when"):

- by polling and by webhook, a worker SIGKILLed right after acknowledging updates whose
  replies are still being written: a new worker answers every acknowledged update,
  exactly once, in order per chat, each stored once;
- the LLM down for 20 s, users writing meanwhile: each told once that the answer will
  come, every message answered once the LLM is back, none twice, in order, stored once.

Users write in bursts (several messages before the answers come), so that a chat has
more than one update pending at once, and its order is at stake.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.telegram import SECRET_HEADER
from bot.config import Settings
from bot.domain import ReplyKind
from bot.emulators.llm_api import LLMServer, Step
from bot.emulators.telegram_api import BOT_ID, FakeBotApi, private_update, user
from bot.service import DEFERRED_TEXT, RESPONDER_FAILED_TEXT
from tests.reliability.conftest import Report
from tests.reliability.load import (
    Attempt,
    LoadResult,
    assert_nothing_lost,
    check_store,
    finals,
    summarize,
)
from tests.reliability.telegram_bot import (
    Worker,
    bot_run_env,
    first_sent_at,
    replies,
    reply_to,
    sent_in_chat,
)
from tests.support import free_port, until

USERS = 12
BURSTS = 4  # a user's bursts, each once the previous one's answers came
BURST = 2  # messages sent at once
LLM_DELAY = 0.4  # s each reply takes: replies are in flight long enough to kill under
IN_FLIGHT_AT_KILL = 4  # LLM requests open when the worker is killed
KILL_AFTER = 8  # replies out before it
# A dead worker's events wait out their lease, then the next sweep takes them.
INBOX = {"INBOX_LEASE_SECONDS": "2", "INBOX_SWEEP_SECONDS": "0.5"}
# The dead worker's user locks and turn holds lapse soon too.
LOCKS = {"LOCK_TTL_SECONDS": "3", "DELIVERY_LEASE_SECONDS": "3"}
BURST_WITHIN = 30.0  # for a burst to be answered, a kill and a restart included
KILL_WINDOW = 1.0  # s before a SIGKILL in which a sent reply may not be marked done yet
WEBHOOK_SECRET = "inbox-test-secret"


@dataclass
class Writer:
    """One simulated Telegram user, and what it sent: text -> (update id, sent at,
    acknowledged at: getUpdates' offset passed it, or the webhook answered 200)."""

    sender: dict[str, Any]
    sent: dict[str, tuple[int, float]] = field(default_factory=dict)
    acknowledged: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.sender["id"])


def new_writers(count: int) -> list[Writer]:
    base = 10**9 + uuid.uuid4().int % 10**8  # fresh Telegram user ids for this run
    return [Writer(user(base + i)) for i in range(count)]


Send = Callable[[Writer, str], Awaitable[None]]


async def write_in_bursts(writer: Writer, send: Send, telegram: FakeBotApi) -> None:
    for burst in range(BURSTS):
        texts = [f"message {burst * BURST + n} from {writer.id}" for n in range(BURST)]
        for text in texts:
            await send(writer, text)
        await until(partial(all_answered, telegram, texts), BURST_WITHIN, f"answers to {texts}")


def all_answered(telegram: FakeBotApi, texts: list[str]) -> bool:
    answered = replies(telegram)
    return all(answered[reply_to(text)] for text in texts)


def by_polling(telegram: FakeBotApi) -> Send:
    """Telegram queueing the update for getUpdates."""

    async def send(writer: Writer, text: str) -> None:
        pushed = await telegram.push(private_update(telegram, writer.sender, text))
        writer.sent[text] = (pushed["update_id"], time.monotonic())

    return send


def by_webhook(telegram: FakeBotApi, url: str) -> Send:
    """Telegram posting the update to the bot's webhook until it answers 200 (a worker
    down refuses the connection, a worker stopping answers 503: it is posted again)."""

    async def send(writer: Writer, text: str) -> None:
        update = private_update(telegram, writer.sender, text)
        writer.sent[text] = (update["update_id"], time.monotonic())
        while (status := await post(url, update)) != 200:
            assert status in (None, 503), status
            await asyncio.sleep(0.2)
        writer.acknowledged[text] = time.monotonic()

    return send


async def post(url: str, update: dict[str, Any]) -> int | None:
    headers = {SECRET_HEADER: WEBHOOK_SECRET}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url, json=update, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as response,
        ):
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None


def open_requests(llm: LLMServer, telegram: FakeBotApi) -> set[str]:
    """Texts whose LLM request arrived and whose reply was not sent yet: in flight."""
    asked = {body["messages"][-1]["content"] for body in llm.requests}
    answered = replies(telegram)
    return {text for text in asked if not answered[reply_to(text)]}


async def kill_mid_reply(first: Worker, telegram: FakeBotApi, llm: LLMServer) -> set[str]:
    """SIGKILL once KILL_AFTER replies are out and IN_FLIGHT_AT_KILL LLM requests are
    open; the texts of those."""
    await until(
        lambda: (
            sum(replies(telegram).values()) >= KILL_AFTER and llm.in_flight >= IN_FLIGHT_AT_KILL
        ),
        within=60,
        what="the load in flight",
    )
    await first.kill()
    return open_requests(llm, telegram)


def attempts_of(writers: list[Writer], telegram: FakeBotApi) -> list[Attempt]:
    """Each message as an Attempt: sent, and answered when its reply was first sent."""
    answered_at = first_sent_at(telegram)
    return [
        Attempt(f"{BOT_ID}:{update_id}", w.id, text, sent_at,
                answered_at.get(reply_to(text), sent_at), ReplyKind.ANSWER, reply_to(text))
        for w in writers for text, (update_id, sent_at) in w.sent.items()
    ]  # fmt: skip


def out_of_order(writers: list[Writer], telegram: FakeBotApi) -> list[str]:
    """Users whose answers came in another order than their messages (each answer
    counted where it was first sent)."""
    wrong = []
    for w in writers:
        answers = [t for t in sent_in_chat(telegram, w.sender["id"]) if t.startswith("LLM")]
        first_times = list(dict.fromkeys(answers))
        if first_times != [reply_to(text) for text in w.sent]:
            wrong.append(w.id)
    return wrong


def sent_twice(telegram: FakeBotApi, killed_at: float) -> tuple[list[float], list[str]]:
    """Answers sent twice as the first was sent in the instant before the kill (the
    dead worker had not yet recorded that it went out: at least once), as seconds
    before the kill; and any other answer sent more than once (a bug)."""
    times: dict[str, list[float]] = {}
    for call in telegram.calls_of("sendMessage"):
        times.setdefault(call.params["text"], []).append(call.at)
    at_kill = {t: killed_at - at[0] for t, at in times.items() if len(at) == 2}
    at_kill = {t: before for t, before in at_kill.items() if before < KILL_WINDOW}
    wrong = [t for t, at in times.items() if len(at) > 1 and t not in at_kill]
    return list(at_kill.values()), wrong


async def kill_and_resume(
    scenario: str,
    env: dict[str, str],
    send: Send,
    acknowledged_at_kill: Callable[[list[Writer], set[str]], set[str]],
    telegram: FakeBotApi,
    llm: LLMServer,
    engine: AsyncEngine,
    tmp_path: Path,
) -> tuple[LoadResult, set[str], set[str]]:
    """The SIGKILL scenario with `send` delivering the updates: its figures, the texts
    in flight at the kill, and those of them acknowledged to Telegram."""
    writers = new_writers(USERS)
    first, second = Worker(env, tmp_path / "first.log"), Worker(env, tmp_path / "second.log")
    started = time.monotonic()
    users: list[asyncio.Task[None]] = []
    try:
        await first.start()
        users += [asyncio.create_task(write_in_bursts(w, send, telegram)) for w in writers]
        in_flight = await kill_mid_reply(first, telegram, llm)
        killed_at = time.monotonic()
        acknowledged = acknowledged_at_kill(writers, in_flight)
        answered_by_first = sum(replies(telegram).values())
        await second.start()
        await asyncio.gather(*users)
        resumed_within = max(first_sent_at(telegram)[reply_to(t)] for t in in_flight) - killed_at
        second_exit = await second.stop()
    finally:
        for task in users:
            task.cancel()
        await asyncio.gather(*users, return_exceptions=True)
        await first.kill()
        await second.kill()
    assert second_exit == 0, (tmp_path / "second.log").read_text()

    attempts = attempts_of(writers, telegram)
    store = await check_store(engine, "telegram", [w.id for w in writers], finals(attempts))
    twice_at_kill, twice = sent_twice(telegram, killed_at)
    result = summarize(
        scenario, attempts, store, sent=len(attempts),
        seconds=time.monotonic() - started, fault_ended=killed_at,
    ).noting(
        in_flight_at_kill=len(in_flight), acknowledged_in_flight=len(acknowledged),
        answered_by_first=answered_by_first, in_flight_answered_within=f"{resumed_within:.2f}s",
        sent_twice_at_kill=len(twice_at_kill),
        sent_twice_first_before_kill=f"{max(twice_at_kill, default=0) * 1000:.0f}ms",
        out_of_order=len(out_of_order(writers, telegram)),
    )  # fmt: skip
    assert not twice, twice
    assert not out_of_order(writers, telegram)
    assert len(replies(telegram)) == USERS * BURSTS * BURST  # every one answered
    return result, in_flight, acknowledged


@pytest.mark.timeout(180)
async def test_polling_worker_killed_mid_reply_its_updates_answered_once_by_the_next(
    settings: Settings,
    engine: AsyncEngine,
    telegram: FakeBotApi,
    llm: LLMServer,
    tmp_path: Path,
    report: Report,
) -> None:
    llm.default = Step(delay=LLM_DELAY)
    env = bot_run_env(settings, telegram, llm, **INBOX, **LOCKS)

    def confirmed(writers: list[Writer], texts: set[str]) -> set[str]:
        """Of `texts`, those whose update getUpdates' offset passed: Telegram will not
        send them again."""
        update_ids = {text: w.sent[text][0] for w in writers for text in w.sent}
        return {text for text in texts if update_ids[text] < telegram.confirmed}

    result, in_flight, acknowledged = await kill_and_resume(
        "telegram polling SIGKILL mid-reply", env, by_polling(telegram), confirmed,
        telegram, llm, engine, tmp_path,
    )  # fmt: skip
    report(result)

    assert in_flight and acknowledged == in_flight  # confirmed, their replies not written
    assert_nothing_lost(result)  # answered once each, stored once with its reply


@pytest.mark.timeout(180)
async def test_webhook_worker_killed_mid_reply_its_updates_answered_once_by_the_next(
    settings: Settings,
    engine: AsyncEngine,
    telegram: FakeBotApi,
    llm: LLMServer,
    tmp_path: Path,
    report: Report,
) -> None:
    llm.default = Step(delay=LLM_DELAY)
    port = free_port()
    webhook = {
        "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/telegram/hook",
        "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TELEGRAM_WEBHOOK_LISTEN": "127.0.0.1",
        "TELEGRAM_WEBHOOK_PORT": str(port),
    }
    env = bot_run_env(settings, telegram, llm, **INBOX, **LOCKS, **webhook)
    url = f"http://127.0.0.1:{port}/telegram/hook"

    def answered_200(writers: list[Writer], texts: set[str]) -> set[str]:
        return {text for w in writers for text in texts & set(w.acknowledged)}

    result, in_flight, acknowledged = await kill_and_resume(
        "telegram webhook SIGKILL mid-reply", env, by_webhook(telegram, url), answered_200,
        telegram, llm, engine, tmp_path,
    )  # fmt: skip
    report(result)

    assert telegram.webhook["url"] == webhook["TELEGRAM_WEBHOOK_URL"]
    assert in_flight and acknowledged == in_flight  # 200 given, their replies not written
    assert_nothing_lost(result)


# -- the LLM down for 20 s ----------------------------------------------------------------

OUTAGE = 20.0  # s the LLM refuses connections
DOWN_USERS = 8
WRITES_IN_OUTAGE = 3  # per user, spread over the outage
ANSWERED_WITHIN = 60.0  # after the outage: the retries' backoff is up to 16 s by then


@pytest.mark.timeout(180)
async def test_llm_down_for_20_s_every_message_answered_once_after_it_returns(
    settings: Settings,
    engine: AsyncEngine,
    telegram: FakeBotApi,
    llm: LLMServer,
    tmp_path: Path,
    report: Report,
) -> None:
    llm.default = Step(delay=0.05)
    # A failing call fails fast (a refused connection after LLM_CONNECT_ATTEMPTS, about
    # a second); the retries come at each sweep's turn, with backoff, for
    # RESPONDER_RETRY_SECONDS (its default, 300 s).
    fast = {"LLM_RETRY_DEADLINE_SECONDS": "5", "LLM_TIMEOUT_SECONDS": "2"}
    env = bot_run_env(settings, telegram, llm, INBOX_SWEEP_SECONDS="0.5", **fast)
    writers = new_writers(DOWN_USERS)
    send = by_polling(telegram)
    worker = Worker(env, tmp_path / "worker.log")
    started = time.monotonic()
    try:
        await worker.start()
        for w in writers:  # before the outage: answered at once
            await send(w, f"hello from {w.id}")
        await until(lambda: len(replies(telegram)) == DOWN_USERS, within=30, what="warm-up")

        await llm.stop()  # down: connections refused
        down_at = time.monotonic()
        for number in range(WRITES_IN_OUTAGE):
            for w in writers:
                await send(w, f"while down {number} from {w.id}")
            await asyncio.sleep(OUTAGE / WRITES_IN_OUTAGE)  # users writing now and then
        deferred_during = replies(telegram)[DEFERRED_TEXT]
        await llm.start(llm.port)
        back_at = time.monotonic()

        expected = DOWN_USERS * (1 + WRITES_IN_OUTAGE)
        answers = lambda: sum(1 for t in replies(telegram) if t.startswith("LLM reply"))  # noqa: E731
        await until(lambda: answers() == expected, within=ANSWERED_WITHIN, what="the answers")
        await asyncio.sleep(1.0)  # a reply sent twice would come within a sweep or two
        exit_code = await worker.stop()
    finally:
        await worker.kill()
    assert exit_code == 0, (tmp_path / "worker.log").read_text()

    attempts = attempts_of(writers, telegram)
    store = await check_store(engine, "telegram", [w.id for w in writers], finals(attempts))
    told = {w.id: sent_in_chat(telegram, w.sender["id"]).count(DEFERRED_TEXT) for w in writers}
    in_outage = [a for a in attempts if a.started >= down_at]
    result = summarize(
        "telegram LLM down 20 s", attempts, store, sent=len(attempts),
        seconds=time.monotonic() - started, fault_ended=back_at,
    ).noting(
        sent_in_outage=len(in_outage), told=sum(told.values()),
        told_before_it_returned=deferred_during,
        answered_in_outage=sum(1 for a in in_outage if a.finished < back_at),
        last_answer_after_return=f"{max(a.finished for a in in_outage) - back_at:.2f}s",
        max_delay=f"{max(a.latency for a in in_outage):.2f}s",
    )  # fmt: skip
    report(result)

    assert set(told.values()) == {1}, told  # each told once that the answer will come
    assert deferred_during == DOWN_USERS  # and told while the LLM was down
    assert replies(telegram)[RESPONDER_FAILED_TEXT] == 0  # no apology: answered
    assert all(n == 1 for text, n in replies(telegram).items() if text.startswith("LLM reply"))
    assert all(a.finished >= back_at for a in in_outage)
    assert not out_of_order(writers, telegram)
    assert_nothing_lost(result)
