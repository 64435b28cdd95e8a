"""`bot run` sent SIGTERM in the middle of a steady load: the messages in flight are
finished, answered and stored, the worker exits 0, and what it had not taken is
answered, once, by the next worker.

The worker is a real `bot run --channels telegram` process polling the local
Telegram Bot API of bot/emulators/telegram_api.py, answering through the local
LLM server (slow enough that several messages are always in flight, where they can
be seen: their requests arrived, their replies not yet). Simulated users send their
next message once the previous one was answered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.domain import ReplyKind
from bot.emulators.llm_api import LLMServer, Step
from bot.emulators.telegram_api import (
    BOT_ID,
    FakeBotApi,
    private_update,
    user,
)
from tests.reliability.conftest import Report
from tests.reliability.load import Attempt, assert_nothing_lost, check_store, finals, summarize
from tests.reliability.telegram_bot import Worker, bot_run_env, replies, reply_to
from tests.support import fetch, until

USERS = 20
PER_USER = 6
LLM_DELAY = 0.4  # seconds each reply takes: messages stay in flight long enough to see
IN_FLIGHT_AT_SIGTERM = 4  # LLM requests open when the signal is sent
SIGTERM_AFTER = 30  # replies delivered before it
LOAD_WITHIN = 60.0


@dataclass
class TelegramUser:
    """One simulated Telegram user, and what it sent: update id -> (text, pushed at,
    answered at)."""

    sender: dict[str, Any]
    sent: dict[int, tuple[str, float, float]]
    pushed: dict[str, int] = field(default_factory=dict)  # text -> update id

    @property
    def channel_user_id(self) -> str:
        return str(self.sender["id"])


@pytest.fixture
def llm(llm: LLMServer) -> LLMServer:
    llm.default = Step(delay=LLM_DELAY)
    return llm


async def talk(telegram: FakeBotApi, person: TelegramUser, stop_at: float) -> None:
    """Send PER_USER messages, each once the previous one was answered."""
    for number in range(PER_USER):
        text = f"message {number} from {person.channel_user_id}"
        pushed_at = time.monotonic()
        pushed = await telegram.push(private_update(telegram, person.sender, text))
        person.pushed[text] = pushed["update_id"]
        while not replies(telegram)[reply_to(text)]:
            assert time.monotonic() < stop_at, f"{text!r} never answered"
            await asyncio.sleep(0.02)
        person.sent[pushed["update_id"]] = (text, pushed_at, time.monotonic())


def open_requests(llm: LLMServer, telegram: FakeBotApi) -> set[str]:
    """Texts whose LLM request arrived and whose reply was not sent yet: in flight."""
    asked = {body["messages"][-1]["content"] for body in llm.requests}
    answered = replies(telegram)
    return {text for text in asked if not answered[reply_to(text)]}


async def stored_texts(engine: AsyncEngine, people: list[TelegramUser]) -> set[str]:
    """The user messages of `people` stored so far."""
    rows = await fetch(
        engine,
        """SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id
           JOIN users u ON u.id = c.user_id
           WHERE m.role = 'user' AND u.channel_type = 'telegram'
             AND u.channel_user_id = ANY(:users)""",
        users=[p.channel_user_id for p in people],
    )
    return {row.content for row in rows}


def new_people() -> list[TelegramUser]:
    base = 10**9 + uuid.uuid4().int % 10**8  # fresh Telegram user ids for this run
    return [TelegramUser(user(base + i), {}) for i in range(USERS)]


async def in_flight_mid_load(telegram: FakeBotApi, llm: LLMServer) -> set[str]:
    """Once SIGTERM_AFTER replies are out and enough LLM requests are open: their texts."""
    await until(
        lambda: (
            sum(replies(telegram).values()) >= SIGTERM_AFTER
            and llm.in_flight >= IN_FLIGHT_AT_SIGTERM
        ),
        within=LOAD_WITHIN,
        what="the load in flight",
    )
    return open_requests(llm, telegram)


async def end_all(users: list[asyncio.Task[None]], *workers: Worker) -> None:
    for task in users:
        task.cancel()
    await asyncio.gather(*users, return_exceptions=True)
    for worker in workers:
        await worker.kill()


@pytest.mark.timeout(150)
async def test_sigterm_mid_load_finishes_what_is_in_flight(
    settings: Settings,
    engine: AsyncEngine,
    telegram: FakeBotApi,
    llm: LLMServer,
    tmp_path: Path,
    report: Report,
) -> None:
    env = bot_run_env(settings, telegram, llm, SHUTDOWN_GRACE_SECONDS="20")
    people = new_people()
    first, second = Worker(env, tmp_path / "first.log"), Worker(env, tmp_path / "second.log")
    started = time.monotonic()
    users: list[asyncio.Task[None]] = []
    try:
        await first.start()
        users += [asyncio.create_task(talk(telegram, p, started + LOAD_WITHIN)) for p in people]
        in_flight = await in_flight_mid_load(telegram, llm)
        signalled = time.monotonic()
        first_exit = await first.stop()
        shutdown = time.monotonic() - signalled
        after_first = replies(telegram)
        stored_by_first = await stored_texts(engine, people)

        await second.start()  # takes what the first left unconfirmed
        await asyncio.gather(*users)
        second_exit = await second.stop()
    finally:
        await end_all(users, first, second)
    seconds = time.monotonic() - started

    attempts = [
        Attempt(f"{BOT_ID}:{update_id}", p.channel_user_id, text, pushed, answered,
                ReplyKind.ANSWER, reply_to(text))
        for p in people for update_id, (text, pushed, answered) in p.sent.items()
    ]  # fmt: skip
    users_ids = [p.channel_user_id for p in people]
    store = await check_store(engine, "telegram", users_ids, finals(attempts))
    result = summarize(
        "bot run SIGTERM mid-load",
        attempts,
        store,
        sent=len(attempts),
        seconds=seconds,
        fault_ended=None,
    ).noting(
        in_flight_at_sigterm=len(in_flight),
        answered_by_first=sum(after_first.values()),
        shutdown=f"{shutdown:.2f}s",
    )
    report(result)

    assert first_exit == 0, (tmp_path / "first.log").read_text()
    assert second_exit == 0, (tmp_path / "second.log").read_text()
    assert len(in_flight) >= 1
    assert all(after_first[reply_to(text)] == 1 for text in in_flight)  # finished, answered
    assert in_flight <= stored_by_first  # and stored before the exit
    assert set(replies(telegram).values()) == {1}  # every message answered once
    assert len(replies(telegram)) == USERS * PER_USER
    assert_nothing_lost(result)  # and each stored once, with its reply
