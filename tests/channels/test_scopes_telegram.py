"""Conversation scopes through the real python-telegram-bot code and the local Bot API:
a private chat, a group, and two forum topics of that group, each its own conversation
as the LLM sees it; the same after a Redis flush and after /reset in one of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.channels.dispatch import Dispatcher
from bot.channels.registry import telegram_options
from bot.channels.telegram import TelegramAdapter
from bot.emulators.llm_api import LLMServer
from bot.emulators.telegram_api import (
    BOT_USERNAME,
    TOKEN,
    FakeBotApi,
    entities,
    group_chat,
    message,
    private_chat,
    update,
    user,
)
from bot.metrics import Metrics
from bot.service import ConversationService
from tests.channels.privacy import assert_apart, mark, request_text
from tests.support import ServiceFactory, flush_cache, until

GROUP = group_chat(-1003000000001)
TOPICS = {"topic1": 71, "topic2": 72}
PLACES = ("dm", "group", "topic1", "topic2")


@pytest.fixture
async def bot(
    telegram: FakeBotApi, llm: LLMServer, make_service: ServiceFactory
) -> AsyncIterator[ConversationService]:
    """A polling adapter whose service asks the local LLM server."""
    service = await make_service(
        telegram_bot_token=TOKEN,
        telegram_api_base_url=telegram.base_url,
        llm_base_url=llm.url,
        default_model="test-model",
    )
    adapter = TelegramAdapter(telegram_options(service.settings), Dispatcher(service, Metrics()))
    run = asyncio.create_task(adapter.run())
    await until(lambda: adapter.connected or run.done())
    yield service
    await asyncio.wait_for(adapter.stop(), 10)
    await asyncio.wait_for(run, 10)
    await service.responder.aclose()


def written(telegram: FakeBotApi, person: dict[str, Any], place: str, text: str) -> dict[str, Any]:
    """`person`'s update saying `text` in `place` (addressed to the bot outside the DM)."""
    if place == "dm":
        return update(telegram, message(telegram, private_chat(person), person, text))
    said = f"@{BOT_USERNAME} {text}"
    extra: dict[str, Any] = {"entities": entities(said, "mention", f"@{BOT_USERNAME}")}
    if place in TOPICS:
        extra |= {"message_thread_id": TOPICS[place], "is_topic_message": True}
    return update(telegram, message(telegram, GROUP, person, said, **extra))


async def talk(telegram: FakeBotApi, person: dict[str, Any], place: str, text: str) -> None:
    """Say `text` in `place` and wait for the bot's answer to it."""
    before = len(telegram.sent)
    await telegram.push(written(telegram, person, place, text))
    await telegram.wait_for(lambda: len(telegram.sent) > before, within=15)


async def test_private_chat_group_and_topics_are_apart(
    bot: ConversationService, telegram: FakeBotApi, llm: LLMServer
) -> None:
    alice = user(4100000001, "alice")
    for round_ in (1, 2):
        for place in PLACES:
            await talk(telegram, alice, place, f"{mark(round_, place)} secret of {place}")
    assert await flush_cache(bot) > 0
    for place in PLACES:  # read back from Postgres, scope by scope
        await talk(telegram, alice, place, mark(3, place))

    assert_apart(llm, PLACES, rounds=(1, 2, 3))
    topic_replies = [sent for sent in telegram.sent if sent.get("message_thread_id") == 71]
    assert len(topic_replies) == 3  # answered in the topic it was asked in


async def test_reset_in_the_group_leaves_the_chat_and_the_topic_alone(
    bot: ConversationService, telegram: FakeBotApi, llm: LLMServer
) -> None:
    bob = user(4100000002, "bob")
    for place in ("dm", "group", "topic1"):
        await talk(telegram, bob, place, mark(1, place))

    await talk(telegram, bob, "group", "/reset")
    for place in ("dm", "group", "topic1"):
        await talk(telegram, bob, place, mark(2, place))

    assert mark(1, "group") not in request_text(llm, mark(2, "group"))  # a new conversation
    assert mark(1, "dm") in request_text(llm, mark(2, "dm"))
    assert mark(1, "topic1") in request_text(llm, mark(2, "topic1"))
