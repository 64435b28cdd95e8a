"""A `bot run` worker SIGKILLed while a reply streams (docs/streaming.md): what the user
wrote is already in Postgres; the part shown never looks complete; the next worker,
taking the update from the inbox once the dead one's lease lapsed, answers it whole,
once, stored once; and it ends
the part the dead worker left in a group with the interrupted note (a private chat's
draft vanishes by itself).

Real `bot run --channels telegram` processes polling the local Bot API, answering
through the local LLM server, which streams the reply slowly enough to kill the worker
in the middle of it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.live import CURSOR
from bot.config import Settings
from bot.emulators.llm_api import LLMServer, Step
from bot.emulators.telegram_api import (
    BOT_USERNAME,
    FakeBotApi,
    entities,
    group_chat,
    message,
    private_update,
    update,
    user,
)
from bot.service import INTERRUPTED_NOTE
from tests.reliability.telegram_bot import Worker, bot_run_env
from tests.support import fetch, until

WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture
def llm(llm: LLMServer) -> LLMServer:
    # About two seconds of words: the kill lands in the middle.
    llm.default = Step(text=WORDS, first_token_delay=0.2, piece_delay=0.2)
    return llm


async def stored(engine: AsyncEngine, sender: dict[str, Any]) -> list[tuple[str, str]]:
    rows = await fetch(
        engine,
        """SELECT m.role, m.content FROM messages m
           JOIN conversations c ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id
           WHERE u.channel_type = 'telegram' AND u.channel_user_id = :user
           ORDER BY m.timestamp""",
        user=str(sender["id"]),
    )
    return [(row.role, row.content) for row in rows]


def in_group(telegram: FakeBotApi, sender: dict[str, Any], text: str) -> dict[str, Any]:
    said = f"@{BOT_USERNAME} {text}"
    mention = entities(said, "mention", f"@{BOT_USERNAME}")
    chat = group_chat(-100_000_000_0000 - uuid.uuid4().int % 10**6)
    return update(telegram, message(telegram, chat, sender, said, entities=mention))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("place", ["private", "group"])
async def test_a_worker_killed_mid_stream_loses_nothing_and_the_next_answers_once(
    settings: Settings,
    engine: AsyncEngine,
    telegram: FakeBotApi,
    llm: LLMServer,
    tmp_path: Path,
    place: str,
) -> None:
    env = bot_run_env(
        settings,
        telegram,
        llm,
        LOCK_TTL_SECONDS="2",
        TELEGRAM_STREAM_INTERVAL_SECONDS="0.2",
        STREAM_ORPHAN_SECONDS="2",
        INBOX_LEASE_SECONDS="2",
        INBOX_SWEEP_SECONDS="0.5",
    )
    first, second = Worker(env, tmp_path / "first.log"), Worker(env, tmp_path / "second.log")
    sender = user(2 * 10**9 + uuid.uuid4().int % 10**8, "kim")
    pushed = private_update(telegram, sender, "count") if place == "private" else None
    pushed = pushed or in_group(telegram, sender, "count")
    try:
        await first.start()
        await telegram.push(pushed)

        def shown() -> int:  # updates of the growing reply the first worker made
            return len(telegram.drafts) + len(telegram.calls_of("editMessageText"))

        await until(lambda: shown() >= 2, within=30, what="the reply streaming")
        await first.kill()  # SIGKILL: no drain, no final update, no cleanup
        assert await stored(engine, sender) == [("user", "count")]  # stored first
        assert telegram.sent == []  # nothing that looks like a whole reply
        half = [m["text"] for m in telegram.bot_messages.values()]
        assert all(text.endswith(CURSOR) for text in half)  # a group's part says so

        await second.start()  # it answers the update left in the inbox
        replies = 1 if place == "private" else 2  # the whole one, and the part ended
        await until(lambda: len(telegram.sent) == replies, within=30, what="the whole reply")
    finally:
        await first.kill()
        await second.kill()

    texts = [m["text"] for m in telegram.sent]
    assert texts.count(WORDS) == 1
    if place == "group":
        [ended] = [text for text in texts if text != WORDS]
        part, note = ended.split("\n\n")
        assert note == INTERRUPTED_NOTE and WORDS.startswith(part) and part != WORDS
    assert await stored(engine, sender) == [("user", "count"), ("assistant", WORDS)]
