"""Conversation scopes through the real slack-bolt code (Socket Mode) and the local Slack:
a DM, and threads started by mentions in two channels and continued in them, each its
own conversation as the LLM sees it; the same after a Redis flush and after /reset."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.channels.dispatch import Dispatcher
from bot.channels.registry import slack_options
from bot.channels.slack import SlackAdapter
from bot.emulators.llm_api import LLMServer
from bot.emulators.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER_ID,
    FakeSlack,
    event_envelope,
)
from bot.metrics import Metrics
from bot.service import ConversationService
from tests.channels.privacy import assert_apart, mark, request_text
from tests.support import ServiceFactory, flush_cache, until

PLACES = ("dm", "thread1", "thread2", "thread3")
_ts = itertools.count(1)


@pytest.fixture
async def bot(
    slack: FakeSlack, llm: LLMServer, make_service: ServiceFactory
) -> AsyncIterator[ConversationService]:
    service = await make_service(
        slack_bot_token=BOT_TOKEN,
        slack_app_token=APP_TOKEN,
        slack_api_base_url=slack.api_url,
        llm_base_url=llm.url,
        default_model="test-model",
    )
    adapter = SlackAdapter(slack_options(service.settings), Dispatcher(service, Metrics()))
    run = asyncio.create_task(adapter.run())
    await until(lambda: (adapter.connected and slack.socket_open) or run.done())
    yield service
    await adapter.stop()
    await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 5)
    await service.responder.aclose()


def ts() -> str:
    return f"{int(time.time())}.{next(_ts):06d}"


class Person:
    """Someone who writes to the bot in a DM and mentions it in channels: each first
    mention starts a thread (the bot answers in it), later ones are written in it."""

    def __init__(self, slack: FakeSlack) -> None:
        self.slack = slack
        self.id = "U" + uuid.uuid4().hex[:10].upper()
        self.threads: dict[str, tuple[str, str]] = {}  # place -> (channel, thread ts)

    def event(self, place: str, text: str) -> dict[str, Any]:
        now = ts()
        if place == "dm":
            return {"type": "message", "channel_type": "im", "channel": "D0DMCHAN123",
                    "user": self.id, "text": text, "ts": now}  # fmt: skip
        channel = "C0CHANNEL01" if place != "thread3" else "C0CHANNEL02"
        event = {"type": "app_mention", "channel": channel, "user": self.id,
                 "text": f"<@{BOT_USER_ID}> {text}", "ts": now}  # fmt: skip
        if place in self.threads:
            event["thread_ts"] = self.threads[place][1]
        else:
            self.threads[place] = (channel, now)
        return event

    async def say(self, place: str, text: str) -> None:
        before = len(self.slack.posts)
        await self.slack.push(event_envelope(self.event(place, text)))
        await until(lambda: len(self.slack.posts) > before, within=15)


async def test_dm_and_threads_are_apart(
    bot: ConversationService, slack: FakeSlack, llm: LLMServer
) -> None:
    alice = Person(slack)
    for round_ in (1, 2):
        for place in PLACES:
            await alice.say(place, f"{mark(round_, place)} secret of {place}")
    assert await flush_cache(bot) > 0
    for place in PLACES:
        await alice.say(place, mark(3, place))

    assert_apart(llm, PLACES, rounds=(1, 2, 3))
    channel, thread = alice.threads["thread2"]
    in_thread = [p for p in slack.posts if (p["channel"], p.get("thread_ts")) == (channel, thread)]
    assert len(in_thread) == 3  # every answer went to the thread it was asked in


async def test_reset_in_a_thread_leaves_the_others_alone(
    bot: ConversationService, slack: FakeSlack, llm: LLMServer
) -> None:
    bob = Person(slack)
    for place in ("dm", "thread1", "thread2"):
        await bob.say(place, mark(1, place))

    await bob.say("thread1", "/reset")
    for place in ("dm", "thread1", "thread2"):
        await bob.say(place, mark(2, place))

    assert mark(1, "thread1") not in request_text(llm, mark(2, "thread1"))
    assert mark(1, "dm") in request_text(llm, mark(2, "dm"))
    assert mark(1, "thread2") in request_text(llm, mark(2, "thread2"))
