"""Conversation scopes through the real discord.py code and the local Discord: a DM, a
server channel, and two threads of it, each its own conversation as the LLM sees it;
the same after a Redis flush and after /reset in one of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.channels.discord import DiscordAdapter
from bot.channels.dispatch import Dispatcher
from bot.channels.registry import discord_options
from bot.emulators.discord_api import TOKEN, FakeDiscord, user
from bot.emulators.llm_api import LLMServer
from bot.metrics import Metrics
from bot.service import ConversationService
from tests.channels.privacy import assert_apart, mark, request_text
from tests.support import ServiceFactory, flush_cache

PLACES = ("dm", "channel", "thread1", "thread2")


@pytest.fixture
async def bot(
    discord_server: FakeDiscord, llm: LLMServer, make_service: ServiceFactory
) -> AsyncIterator[ConversationService]:
    service = await make_service(
        discord_bot_token=TOKEN,
        discord_api_base_url=discord_server.api_url,
        llm_base_url=llm.url,
        default_model="test-model",
    )
    options = discord_options(service.settings)
    adapter = DiscordAdapter(options, Dispatcher(service, Metrics()), guild_ready_timeout=0.2)
    run = asyncio.create_task(adapter.run())
    await discord_server.wait_for(lambda: adapter.connected or run.done(), 12)
    assert adapter.connected
    yield service
    await adapter.stop()
    await asyncio.wait({run}, timeout=10)
    await service.responder.aclose()


class Person:
    """Someone with a DM channel of their own, who also writes in the server."""

    def __init__(self, server: FakeDiscord, name: str) -> None:
        self.server = server
        self.author = user(name)
        self.dm: str | None = None

    def message(self, place: str, text: str) -> dict[str, Any]:
        server, me = self.server, self.server.bot
        if place == "dm":
            sent = server.message(self.author, text, channel_id=self.dm)
            self.dm = sent["channel_id"]  # the same DM channel from then on
            return sent
        channel = {"channel": server.channel_id, "thread1": server.thread_id}.get(
            place, server.other_thread_id
        )
        said = f"<@{me['id']}> {text}"
        return server.message(self.author, said, guild=True, channel_id=channel, mentions=(me,))

    async def say(self, place: str, text: str) -> None:
        sent = self.message(place, text)
        channel = sent["channel_id"]
        before = len(self.server.posts(channel))
        await self.server.push_message(sent)
        await self.server.wait_for(lambda: len(self.server.posts(channel)) > before, 15)


async def test_dm_channel_and_threads_are_apart(
    bot: ConversationService, discord_server: FakeDiscord, llm: LLMServer
) -> None:
    alice = Person(discord_server, "alice")
    for round_ in (1, 2):
        for place in PLACES:
            await alice.say(place, f"{mark(round_, place)} secret of {place}")
    assert await flush_cache(bot) > 0
    for place in PLACES:
        await alice.say(place, mark(3, place))

    assert_apart(llm, PLACES, rounds=(1, 2, 3))
    assert len(discord_server.posts(discord_server.other_thread_id)) == 3  # in the thread


async def test_reset_in_a_thread_leaves_the_others_alone(
    bot: ConversationService, discord_server: FakeDiscord, llm: LLMServer
) -> None:
    bob = Person(discord_server, "bob")
    for place in ("dm", "channel", "thread1"):
        await bob.say(place, mark(1, place))

    await bob.say("thread1", "/reset")
    for place in ("dm", "channel", "thread1"):
        await bob.say(place, mark(2, place))

    assert mark(1, "thread1") not in request_text(llm, mark(2, "thread1"))
    assert mark(1, "dm") in request_text(llm, mark(2, "dm"))
    assert mark(1, "channel") in request_text(llm, mark(2, "channel"))
