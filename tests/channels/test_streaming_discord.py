"""Streamed replies on Discord, through discord.py and the local Discord: one message
posted and edited as the reply grows, within Discord's edit limits; a reply longer than
2,000 characters goes on in a new message; an edit answered 429 is waited out."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.streams import StreamLedger
from bot.channels.live import CURSOR
from bot.domain import TextSink
from bot.emulators.discord_api import Call, FakeDiscord, user
from bot.responders import EchoResponder, ResponderRequest, ResponderResult
from bot.service import INTERRUPTED_NOTE
from tests.channels import test_discord
from tests.channels.test_discord import StartBot, user_rows
from tests.support import HangingStream, lapse_leases

start_bot = test_discord.start_bot  # the fixture: the adapter on the local Discord
INTERVAL = 0.2  # seconds between two updates of a growing reply, here


class Chunks(EchoResponder):
    """Streams a given text in chunks of `size` characters, `pause` apart."""

    def __init__(self, text: str, size: int, pause: float) -> None:
        self.text, self.size, self.pause = text, size, pause

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        for start in range(0, len(self.text), self.size) if on_text else ():
            await asyncio.sleep(self.pause)
            await on_text(self.text[start : start + self.size])  # type: ignore[misc]
        return ResponderResult(self.text, "chunks", 1, 1)


async def test_a_reply_is_posted_then_edited_as_it_grows(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    text = " ".join(f"word{i}" for i in range(60))
    bot = await start_bot(Chunks(text, 40, 0.05), discord_stream_interval_seconds=INTERVAL)
    message = discord_server.message(user("ann"), "go")

    await discord_server.push_message(message)
    await discord_server.wait_for(lambda: len(discord_server.posts()) == 1)

    assert discord_server.posts()[0]["content"] == text
    edits = discord_server.edits()
    assert edits and all(e.body["content"].endswith(CURSOR) for e in edits[:-1])
    assert edits[-1].body["content"] == text
    # Posted once, edited at most once an interval: inside 5 edits per 5 s.
    assert len(discord_server.calls_to("POST", f"/channels/{message['channel_id']}/messages")) == 1
    assert len(edits) <= 1 + 0.55 / INTERVAL + 2
    assert bot.sample("bot_messages_out_total") == 1


async def test_a_reply_longer_than_2000_characters_goes_on_in_a_new_message(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    paragraph = ("Words that make a sentence. " * 20).strip()
    text = "\n\n".join([paragraph] * 6)  # about 3,400 characters
    await start_bot(Chunks(text, 400, 0.25), discord_stream_interval_seconds=INTERVAL)

    await discord_server.push_message(discord_server.message(user("bo"), "long"))
    await discord_server.wait_for(
        lambda: "\n\n".join(p["content"] for p in discord_server.posts()) == text, 20
    )

    parts = [post["content"] for post in discord_server.posts()]
    assert len(parts) == 2 and all(len(part) <= 2000 for part in parts)
    assert parts[0].endswith(paragraph)  # cut between two paragraphs
    assert [c for c in discord_server.calls if c.status == 400] == []


async def test_the_reply_is_stored_before_its_last_edit(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    await start_bot(Chunks(text, 20, 0.05), discord_stream_interval_seconds=INTERVAL)
    eli = user("eli")
    stored_at_last_edit: list[list[str]] = []

    async def look(call: Call) -> None:
        if call.method == "PATCH" and (call.body or {}).get("content") == text:
            stored_at_last_edit.append([row[1] for row in await user_rows(engine, eli)])

    discord_server.before_answer = look
    await discord_server.push_message(discord_server.message(eli, "go"))
    await discord_server.wait_for(lambda: len(discord_server.posts()) == 1)

    assert stored_at_last_edit == [["go", text]]  # the whole reply, before it is shown whole


async def test_an_edit_answered_429_is_waited_out_and_loses_no_text(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    text = " ".join(f"w{i}" for i in range(50))
    await start_bot(Chunks(text, 20, 0.05), discord_stream_interval_seconds=INTERVAL)
    discord_server.rate_limited_edits = 1

    await discord_server.push_message(discord_server.message(user("cy"), "go"))
    await discord_server.wait_for(lambda: len(discord_server.posts()) == 1, 20)

    assert discord_server.posts()[0]["content"] == text
    assert [c for c in discord_server.calls if c.method == "PATCH" and c.status == 429]


async def test_a_reply_its_worker_left_growing_is_ended_by_another_with_the_note(
    start_bot: StartBot, discord_server: FakeDiscord, streams: StreamLedger
) -> None:
    responder = HangingStream("one two three")
    bot = await start_bot(responder, streams=streams, discord_stream_interval_seconds=INTERVAL)
    await discord_server.push_message(discord_server.message(user("di"), "go"))
    await discord_server.wait_for(lambda: responder.shown.is_set() and discord_server.bot_messages)
    for task in list(bot.adapter._handling):  # the worker dies mid-reply: no final update
        task.cancel()
    await discord_server.wait_for(lambda: not bot.adapter._handling)
    [left] = discord_server.bot_messages.values()
    assert left["content"] == f"one{CURSOR}" and discord_server.posts() == []

    lapse_leases(streams)  # nobody renews its lease
    [orphan] = await streams.orphans("discord")
    await bot.adapter.end_stream(orphan, INTERRUPTED_NOTE)

    assert [post["content"] for post in discord_server.posts()] == [f"one\n\n{INTERRUPTED_NOTE}"]
