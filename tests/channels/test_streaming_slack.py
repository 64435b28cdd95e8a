"""Streamed replies on Slack, through slack_bolt / slack_sdk and the local fake Slack:
a stream in the message's thread (chat.startStream, appendStream, stopStream; for
the writer, in a channel), appends throttled, a long reply continued in a new stream,
429s waited out, a workspace that refuses streams answered by a message posted and
updated, and a reply cut off shown as such; the reply is stored before the stream
stops."""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.streams import StreamLedger
from bot.channels.live import CURSOR
from bot.config import Settings
from bot.emulators.llm_api import LLMServer, Step
from bot.emulators.slack_api import BOT_USER_ID, STREAM_ARGUMENTS, TEAM_ID, FakeSlack
from bot.responders import EchoResponder
from bot.responders.factory import build_responder
from bot.service import INTERRUPTED_NOTE
from tests.channels import test_slack
from tests.channels.test_slack import Start, deliver_event, dm, slack_id, slack_ts
from tests.channels.test_streaming_telegram import Words
from tests.support import HangingStream, echo, lapse_leases, messages_of, until

pytestmark = pytest.mark.timeout(20)

start = test_slack.start  # the fixture: adapters on the fake Slack, stopped after
INTERVAL = 0.1  # seconds between two updates of a growing reply, here


def mention(user: str, text: str, thread_ts: str | None = None) -> dict[str, Any]:
    """A mention in a channel: a thread of its own, or a message in `thread_ts`."""
    event = {
        "type": "app_mention",
        "user": user,
        "channel": "C0CHANNEL12",
        "ts": slack_ts(next(_ts)),
        "text": f"<@{BOT_USER_ID}> {text}",
    }
    return event if thread_ts is None else {**event, "thread_ts": thread_ts}


_ts = itertools.count(10)


def test_the_fake_takes_the_stream_arguments_slack_sdk_sends() -> None:
    for method, (required, optional) in STREAM_ARGUMENTS.items():
        function = getattr(AsyncWebClient, method.replace(".", "_"))
        named = [
            p for p in inspect.signature(function).parameters.values() if p.kind == p.KEYWORD_ONLY
        ]
        assert {p.name for p in named if p.default is p.empty} == required, method
        assert {p.name for p in named if p.default is not p.empty} == optional, method


async def test_a_dm_sees_one_stream_grow_stored_before_it_stops(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start(EchoResponder(word_delay=0.03), slack_stream_interval_seconds=INTERVAL)
    user = slack_id("U")
    stored_at_stop: list[list[str]] = []
    calls: list[tuple[str, dict[str, Any]]] = []

    async def look(method: str, params: dict[str, Any]) -> None:
        calls.append((method, params))
        if method == "chat.stopStream":
            stored_at_stop.append([m.content for m in await messages_of(engine, user)])

    slack.before_write = look
    event = dm(user, "tell me")
    await deliver_event(run, slack, event)
    await until(lambda: len(slack.posts) == 1)

    final = echo("tell me")
    [message] = slack.messages.values()
    assert message.streamed and message.text == final and message.thread_ts == event["ts"]
    methods = [method for method, _, _ in message.writes]
    assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream"
    assert "chat.appendStream" in methods  # it grew between the two
    assert CURSOR not in message.text  # Slack shows a stream being written itself
    assert "recipient_user_id" not in calls[0][1]  # a DM's stream is for its one person
    assert stored_at_stop == [["tell me", final]]  # stored before the final update
    counted = 'bot_stream_updates_per_reply_count{channel="slack"} 1.0'
    await until(lambda: counted in run.dispatcher.metrics.render().decode())  # adapter's turn
    metrics = run.dispatcher.metrics.render().decode()
    assert 'bot_first_token_seconds_count{channel="slack"} 1.0' in metrics
    assert f'bot_stream_updates_per_reply_sum{{channel="slack"}} {len(methods)}.0' in metrics


async def test_a_mention_streams_for_its_writer_appending_at_most_once_an_interval(
    start: Start, slack: FakeSlack
) -> None:
    text = " ".join(f"word{i}" for i in range(40))
    run = await start(Words(text, delay=0.01), slack_stream_interval_seconds=INTERVAL)
    user = slack_id("U")
    calls: list[tuple[str, dict[str, Any]]] = []

    async def look(method: str, params: dict[str, Any]) -> None:
        calls.append((method, params))

    slack.before_write = look
    event = mention(user, "go")
    await deliver_event(run, slack, event)
    await until(lambda: len(slack.posts) == 1)

    assert slack.posts == [{"channel": "C0CHANNEL12", "thread_ts": event["ts"], "text": text}]
    started = calls[0][1]
    assert calls[0][0] == "chat.startStream"
    assert (started["recipient_user_id"], started["recipient_team_id"]) == (user, TEAM_ID)
    times = [at for _, at, _ in slack.writes()]
    # The first update, then at most one an interval (0.4 s of words), and the last.
    assert len(times) <= 2 + (times[-1] - times[0]) / INTERVAL + 1


async def test_a_reply_longer_than_a_message_goes_on_in_a_new_stream(
    start: Start, slack: FakeSlack
) -> None:
    paragraph = ("A sentence that goes on for a while. " * 30).strip()
    text = "\n\n".join([paragraph] * 5)  # about 5,600 characters
    # Shown as it grows, in chunks: it outgrows the first message while streaming.
    words = Words(text, delay=0.12, chunk=700)
    run = await start(words, slack_stream_interval_seconds=INTERVAL)
    await deliver_event(run, slack, dm(slack_id("U"), "long"))
    await until(lambda: "".join(p["text"] for p in slack.posts).count("A ") >= 150)

    parts = [p["text"] for p in slack.posts]
    assert len(parts) == 2 and all(len(part) <= 4000 for part in parts)
    assert all(m.streamed for m in slack.messages.values())
    assert len(slack.writes("chat.appendStream")) >= 3  # it was shown as it grew
    # A stream can't take text back: cut at a word break after what it showed.
    assert len(parts[0]) >= 5 * 700 and parts[0] + " " + parts[1] == text


async def test_a_429_during_appends_is_waited_out_and_loses_no_text(
    start: Start, slack: FakeSlack
) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    run = await start(Words(text, delay=0.01), slack_stream_interval_seconds=INTERVAL)
    slack.rate_limit_next, slack.rate_limited_methods = 1, ("chat.appendStream",)

    await deliver_event(run, slack, dm(slack_id("U"), "go"))
    await until(lambda: len(slack.posts) == 1)

    assert slack.posts[0]["text"] == text
    assert [method for method, _ in slack.limited] == ["chat.appendStream"]
    rate_limited = run.dispatcher.metrics.platform_rate_limited.labels("slack")
    assert rate_limited._value.get() == 1


async def test_a_workspace_refusing_streams_gets_a_message_posted_and_updated(
    start: Start, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    slack.streams_refused = "feature_not_enabled"
    run = await start(EchoResponder(word_delay=0.03), slack_stream_interval_seconds=INTERVAL)
    user = slack_id("U")

    with caplog.at_level(logging.WARNING, logger="bot.channels"):
        first = mention(user, "first")
        await deliver_event(run, slack, first)
        await until(lambda: len(slack.posts) == 1)
        await deliver_event(run, slack, mention(user, "second", thread_ts=first["ts"]))
        await until(lambda: len(slack.posts) == 2)

    assert [p["text"] for p in slack.posts] == [echo("first"), echo("second", earlier=2)]
    first, second = slack.messages.values()
    assert not first.streamed and not second.streamed
    shown = [text for method, _, text in first.writes if method == "chat.update"][:-1]
    shown.insert(0, first.writes[0][2])  # the post, then the updates before the last
    assert shown and all(text.endswith(CURSOR) for text in shown)  # still being written
    assert slack.calls["chat.startStream"] == 1  # asked once, remembered
    refusals = [r for r in caplog.records if "chat.startStream" in r.getMessage()]
    assert len(refusals) == 1 and "feature_not_enabled" in refusals[0].getMessage()


async def test_a_reply_the_llm_breaks_off_ends_with_a_note_and_is_stored_so(
    start: Start,
    slack: FakeSlack,
    llm: LLMServer,
    engine: AsyncEngine,
    make_settings: Callable[..., Settings],
) -> None:
    responder = build_responder(make_settings(llm_base_url=llm.url, llm_timeout_seconds=2))
    run = await start(responder, slack_stream_interval_seconds=INTERVAL)
    llm.then(Step(text="one two three four five six", break_after=3, piece_delay=0.01))
    user = slack_id("U")
    try:
        await deliver_event(run, slack, dm(user, "count"))
        await until(lambda: len(slack.posts) == 1)
    finally:
        await responder.aclose()

    [message] = slack.messages.values()
    assert message.text == f"one two three \n\n{INTERRUPTED_NOTE}"
    assert message.writes[-1][0] == "chat.stopStream"
    rows = await messages_of(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "count"),
        ("assistant", "one two three "),
    ]


@pytest.mark.parametrize("refused", [False, True], ids=["stream", "posted"])
async def test_a_reply_its_worker_left_growing_is_ended_by_another_with_the_note(
    start: Start, slack: FakeSlack, streams: StreamLedger, refused: bool
) -> None:
    slack.streams_refused = "feature_not_enabled" if refused else None
    responder = HangingStream("one two three")
    run = await start(responder, streams=streams, slack_stream_interval_seconds=INTERVAL)
    await deliver_event(run, slack, mention(slack_id("U"), "go"))
    await until(lambda: responder.shown.is_set() and len(slack.messages) == 1)
    for task in list(run.adapter._tasks):  # the worker dies mid-reply: no final update
        task.cancel()
    await until(lambda: not run.adapter._tasks)
    [message] = slack.messages.values()
    assert not message.complete

    lapse_leases(streams)  # nobody renews its lease
    [orphan] = await streams.orphans("slack")
    await run.adapter.end_stream(orphan, INTERRUPTED_NOTE)

    assert message.complete and message.streamed is not refused
    assert message.text == f"one\n\n{INTERRUPTED_NOTE}"
    assert await streams.orphans("slack") == []
