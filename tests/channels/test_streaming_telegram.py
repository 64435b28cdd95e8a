"""Streamed replies on Telegram, through python-telegram-bot and the local Bot API:
a draft in a private chat then one message, a message edited as it grows in a group,
updates throttled, a long reply continued in a new message, 429s waited out, and a
reply cut off shown as such; the reply is stored before its final update."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.streams import StreamLedger
from bot.channels.dispatch import Dispatcher
from bot.channels.live import CURSOR
from bot.config import Settings
from bot.domain import TextSink
from bot.emulators.llm_api import LLMServer, Step
from bot.emulators.telegram_api import (
    BOT_USERNAME,
    FakeBotApi,
    entities,
    group_chat,
    message,
    update,
    user,
)
from bot.metrics import Metrics
from bot.responders import EchoResponder, ResponderRequest, ResponderResult
from bot.responders.factory import build_responder
from bot.service import INTERRUPTED_NOTE
from tests.channels import test_telegram
from tests.channels.test_telegram import Start, new_id, private_update
from tests.support import HangingStream, ServiceFactory, echo, lapse_leases, messages_of, until

start = test_telegram.start  # the fixture: adapters on the fake Bot API, stopped after
INTERVAL = 0.1  # seconds between two updates of a growing reply, here


class Words(EchoResponder):
    """Streams a given text word by word (or in chunks of `chunk` characters), `delay`
    apart."""

    def __init__(self, text: str, delay: float = 0.02, chunk: int = 0) -> None:
        self.text = text
        self.word_delay = delay
        self.chunk = chunk

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        if on_text is not None and self.chunk:
            for start in range(0, len(self.text), self.chunk):
                await asyncio.sleep(self.word_delay)
                await on_text(self.text[start : start + self.chunk])
        elif on_text is not None:
            await self._stream(self.text, on_text)
        return ResponderResult(self.text, "words", 1, 1)


def in_group(telegram: FakeBotApi, person: dict[str, Any], text: str) -> dict[str, Any]:
    said = f"@{BOT_USERNAME} {text}"
    mention = entities(said, "mention", f"@{BOT_USERNAME}")
    return update(telegram, message(telegram, group_chat(), person, said, entities=mention))


async def test_a_private_chat_sees_a_draft_grow_then_one_message_stored_before_it(
    start: Start,
    telegram: FakeBotApi,
    engine: AsyncEngine,
) -> None:
    await start(EchoResponder(word_delay=0.03), telegram_stream_interval_seconds=INTERVAL)
    ann = user(new_id(), "ann")
    stored_at_send: list[list[str]] = []

    async def look(method: str, params: dict[str, Any]) -> None:
        if method == "sendMessage":
            stored_at_send.append([m.content for m in await messages_of(engine, str(ann["id"]))])

    telegram.before_answer = look
    await telegram.push(private_update(telegram, ann, "tell me"))
    await telegram.wait_for(lambda: len(telegram.sent) == 1)

    final = echo("tell me")
    assert telegram.sent[0]["text"] == final
    drafts = [text for _, _, text in telegram.drafts]
    assert len(drafts) >= 2 and all(text.endswith(CURSOR) for text in drafts)
    assert all(final.startswith(text.removesuffix(CURSOR)) for text in drafts)
    assert len({draft_id for _, draft_id, _ in telegram.drafts}) == 1  # one animated draft
    assert stored_at_send == [["tell me", final]]  # stored before the final update


async def test_a_group_sees_one_message_edited_as_it_grows_at_most_once_an_interval(
    start: Start,
    telegram: FakeBotApi,
) -> None:
    text = " ".join(f"word{i}" for i in range(40))
    running = await start(Words(text, delay=0.01), telegram_stream_interval_seconds=INTERVAL)
    bob = user(new_id(), "bob")

    await telegram.push(in_group(telegram, bob, "go"))
    await telegram.wait_for(lambda: len(telegram.sent) == 1)

    assert telegram.sent[0]["text"] == text
    assert telegram.drafts == []  # no drafts outside private chats
    posts, edits = telegram.calls_of("sendMessage"), telegram.calls_of("editMessageText")
    assert len(posts) == 1 and posts[0].params["text"].endswith(CURSOR)
    assert posts[0].params.get("reply_parameters") is not None  # quotes the message answered
    assert edits and edits[-1].params["text"] == text
    updates = [c.at for c in posts + edits]
    # The first update, then at most one an interval (0.4 s of words), and the last.
    assert len(updates) <= 2 + (updates[-1] - updates[0]) / INTERVAL + 1
    counted = 'bot_stream_updates_per_reply_count{channel="telegram"} 1.0'
    render = running.dispatcher.metrics.render
    await telegram.wait_for(lambda: counted in render().decode())  # once the adapter read it
    metrics = render().decode()
    assert 'bot_first_token_seconds_count{channel="telegram"} 1.0' in metrics
    assert f'bot_stream_updates_per_reply_sum{{channel="telegram"}} {len(updates)}.0' in metrics


async def test_a_reply_longer_than_a_message_goes_on_in_a_new_one(
    start: Start,
    telegram: FakeBotApi,
) -> None:
    paragraph = ("A sentence that goes on for a while. " * 30).strip()
    text = "\n\n".join([paragraph] * 6)  # about 6,700 characters
    # Shown as it grows, in chunks: it outgrows the first message while streaming.
    await start(Words(text, delay=0.12, chunk=700), telegram_stream_interval_seconds=INTERVAL)
    cy = user(new_id(), "cy")

    await telegram.push(in_group(telegram, cy, "long"))
    await telegram.wait_for(lambda: "".join(m["text"] for m in telegram.sent).count("A ") >= 180)

    parts = [m["text"] for m in telegram.sent]
    assert len(parts) == 2 and all(len(part) <= 4096 for part in parts)
    assert [c.method for c in telegram.calls if c.status == 400] == []  # none too long
    # Shown as it grew, within the chat's budget (about 1 a second, bot/channels/pacing.py).
    assert len(telegram.calls_of("editMessageText")) >= 2
    assert parts[0].endswith(paragraph)  # cut at the break between two paragraphs
    assert "\n\n".join(parts) == text


async def test_a_429_during_updates_is_waited_out_and_loses_no_text(
    start: Start,
    telegram: FakeBotApi,
) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    running = await start(Words(text, delay=0.01), telegram_stream_interval_seconds=INTERVAL)
    dee = user(new_id(), "dee")
    telegram.edits_rate_limited = 1

    await telegram.push(in_group(telegram, dee, "go"))
    await telegram.wait_for(lambda: len(telegram.sent) == 1, within=15)

    assert telegram.sent[0]["text"] == text
    assert telegram.calls_of("editMessageText", status=429) != []
    rate_limited = running.dispatcher.metrics.platform_rate_limited.labels("telegram")
    assert rate_limited._value.get() >= 1


async def test_a_reply_the_llm_breaks_off_ends_with_a_note_and_is_stored_so(
    start: Start,
    telegram: FakeBotApi,
    llm: LLMServer,
    engine: AsyncEngine,
    make_settings: Callable[..., Settings],
) -> None:
    responder = build_responder(make_settings(llm_base_url=llm.url, llm_timeout_seconds=2))
    await start(responder, telegram_stream_interval_seconds=INTERVAL)
    llm.then(Step(text="one two three four five six", break_after=3, piece_delay=0.01))
    eve = user(new_id(), "eve")
    try:
        await telegram.push(private_update(telegram, eve, "count"))
        await telegram.wait_for(lambda: len(telegram.sent) == 1)
    finally:
        await responder.aclose()

    assert telegram.sent[0]["text"] == f"one two three \n\n{INTERRUPTED_NOTE}"
    shown = [text.removesuffix(CURSOR) for _, _, text in telegram.drafts]
    assert shown and all("one two three".startswith(text) for text in shown)  # then it broke
    rows = await messages_of(engine, str(eve["id"]))
    assert [r.content for r in rows] == ["count", "one two three "]
    assert rows[1].role == "assistant"


async def died_mid_reply(
    start: Start,
    telegram: FakeBotApi,
    streams: StreamLedger,
    make_service: ServiceFactory,
    pushed: dict[str, Any],
) -> test_telegram.Running:
    """An adapter that showed the start of its reply to `pushed` and then died: its
    handler cancelled, no final update made."""
    responder = HangingStream("one two three")
    dispatcher = Dispatcher(await make_service(responder=responder), Metrics(), streams)
    running = await start(dispatcher=dispatcher, telegram_stream_interval_seconds=INTERVAL)
    await telegram.push(pushed)
    await until(lambda: responder.shown.is_set() and (telegram.bot_messages or telegram.drafts))
    for task in list(running.adapter._handlers):
        task.cancel()
    await until(lambda: not running.adapter._handlers)
    return running


async def test_a_reply_its_worker_left_growing_is_ended_by_another_with_the_note(
    start: Start, telegram: FakeBotApi, streams: StreamLedger, make_service: ServiceFactory
) -> None:
    pushed = in_group(telegram, user(new_id(), "fay"), "go")
    running = await died_mid_reply(start, telegram, streams, make_service, pushed)
    [left] = telegram.bot_messages.values()
    assert left["text"] == f"one{CURSOR}" and telegram.sent == []

    lapse_leases(streams)
    [orphan] = await streams.orphans("telegram")
    await running.adapter.end_stream(orphan, INTERRUPTED_NOTE)

    assert [m["text"] for m in telegram.sent] == [f"one\n\n{INTERRUPTED_NOTE}"]


async def test_a_draft_is_not_booked_it_vanishes_with_its_worker(
    start: Start, telegram: FakeBotApi, streams: StreamLedger, make_service: ServiceFactory
) -> None:
    pushed = private_update(telegram, user(new_id(), "gus"), "go")
    await died_mid_reply(start, telegram, streams, make_service, pushed)
    assert telegram.drafts and telegram.bot_messages == {}

    lapse_leases(streams)
    assert await streams.orphans("telegram") == []
