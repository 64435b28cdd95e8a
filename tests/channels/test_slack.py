"""The Slack adapter end to end: real slack_bolt / slack_sdk against a local fake Slack.

HTTP mode gets signed Events API posts; Socket Mode gets envelopes over a local
websocket. Replies are asserted on the messages the SDK really wrote (streamed or
posted), and on the rows in the test Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.streams import StreamLedger
from bot.channels import slack as slack_channel
from bot.channels.dispatch import Dispatcher
from bot.channels.registry import slack_options
from bot.channels.slack import SlackAdapter
from bot.config import Settings
from bot.domain import ChatKind, IncomingMessage, TextSink
from bot.emulators.slack_api import (
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    FakeSlack,
    event_envelope,
    sign,
)
from bot.errors import PlatformRejected, PlatformUnavailable
from bot.metrics import Metrics
from bot.responders import EchoResponder, Responder, ResponderRequest, ResponderResult
from bot.service import ConversationService
from bot.worker import Worker
from tests.support import (
    GatedResponder,
    ServiceFactory,
    SlowResponder,
    echo,
    fetch,
    free_port,
    messages_of,
    until,
    usernames,
)

pytestmark = pytest.mark.timeout(15)


def slack_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:10].upper()


def slack_ts(n: int = 100) -> str:
    return f"{int(time.time())}.{n:06d}"


def dm(user: str, text: str, **extra: Any) -> dict[str, Any]:
    event = {
        "type": "message",
        "channel_type": "im",
        "user": user,
        "text": text,
        "channel": "D0DMCHAN123",
        "ts": slack_ts(),
        "client_msg_id": str(uuid.uuid4()),
    }
    return {**event, **extra}


class LongResponder(EchoResponder):
    """Answers 9000 characters, more than two Slack messages hold."""

    text = ("lorem ipsum " * 750).strip()

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        return ResponderResult(text=self.text, model_used="long")


@dataclass
class Running:
    adapter: SlackAdapter
    dispatcher: Dispatcher
    service: ConversationService
    task: asyncio.Task[None]

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.port}/slack/events"

    def sent(self) -> float:
        value = self.dispatcher.metrics.registry.get_sample_value(
            "bot_messages_out_total", {"channel": "slack"}
        )
        return value or 0.0


Start = Callable[..., Awaitable[Running]]


def adapter_settings(
    make_settings: Callable[..., Settings], slack: FakeSlack, socket: bool, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": BOT_TOKEN,
        "slack_api_base_url": slack.api_url,
        "slack_listen": "127.0.0.1",
        "slack_port": 0,
        "shutdown_grace_seconds": 10,
        # A streamed reply is one chat.startStream and one chat.stopStream here.
        "slack_stream_interval_seconds": 60,
    }
    values["slack_app_token" if socket else "slack_signing_secret"] = (
        APP_TOKEN if socket else SIGNING_SECRET
    )
    return make_settings(**{**values, **overrides})


@pytest.fixture
async def start(
    make_service: ServiceFactory,
    make_settings: Callable[..., Settings],
    slack: FakeSlack,
    redis: object,
) -> AsyncIterator[Start]:
    """Start a SlackAdapter on a real service (HTTP mode unless socket=True)."""
    running: list[Running] = []

    async def start(
        responder: Responder | None = None,
        socket: bool = False,
        dispatcher_class: type[Dispatcher] = Dispatcher,
        service_settings: dict[str, Any] | None = None,
        streams: StreamLedger | None = None,
        **overrides: Any,
    ) -> Running:
        service = await make_service(responder=responder, **(service_settings or {}))
        dispatcher = dispatcher_class(service, Metrics(), streams)
        settings = adapter_settings(make_settings, slack, socket, **overrides)
        adapter = SlackAdapter(slack_options(settings), dispatcher)
        task = asyncio.create_task(adapter.run())
        run = Running(adapter, dispatcher, service, task)
        running.append(run)
        await until(lambda: adapter.connected or task.done())
        if task.done():
            task.result()
        return run

    yield start
    for run in running:
        await run.adapter.stop()
        await asyncio.wait_for(asyncio.gather(run.task, return_exceptions=True), 5)


async def post_event(
    url: str,
    body: dict[str, Any] | bytes,
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """POST to the adapter's Request URL, signed as Slack signs it."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = int(time.time()) if timestamp is None else timestamp
    sent = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": str(stamp),
        "X-Slack-Signature": sign(raw, stamp, secret),
        **(headers or {}),
    }
    async with aiohttp.ClientSession() as session, session.post(url, data=raw, headers=sent) as r:
        return r.status, await r.text()


async def deliver_event(run: Running, slack: FakeSlack, event: dict[str, Any]) -> dict[str, Any]:
    body = event_envelope(event)
    slack.violations += slack.spec.envelope_errors(body)
    status, _ = await post_event(run.events_url, body)
    assert status == 200
    return body


# HTTP Events API


async def test_dm_is_answered_in_its_thread_and_stored(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start()
    user = slack_id("U")
    event = dm(user, "hello bot")
    body = await deliver_event(run, slack, event)
    await until(lambda: len(slack.posts) == 1)
    assert slack.posts == [
        {"channel": "D0DMCHAN123", "thread_ts": event["ts"], "text": echo("hello bot")}
    ]
    rows = await messages_of(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "hello bot"),
        ("assistant", echo("hello bot")),
    ]
    assert rows[0].platform_message_id == body["event_id"]
    await until(lambda: run.sent() == 1)  # counted once the response is read
    # The hot path makes no Web API call but the reply's stream (auth.test is cached).
    before = dict(slack.calls)
    await deliver_event(run, slack, dm(user, "again"))
    await until(lambda: len(slack.posts) == 2)
    assert slack.posts[1]["text"] == echo("again", earlier=2)
    assert dict(slack.calls) == {**before, "chat.startStream": 2, "chat.stopStream": 2}


async def test_mention_in_channel_is_answered_without_the_mention(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start()
    user = slack_id("U")
    parent = slack_ts(7)
    event = {
        "type": "app_mention",
        "user": user,
        "channel": "C0CHANNEL12",
        "ts": slack_ts(9),
        "thread_ts": parent,
        "text": f"<@{BOT_USER_ID}> is 1 &lt; 2 &amp;&amp; 3 &gt; 2?",
    }
    await deliver_event(run, slack, event)
    await until(lambda: len(slack.posts) == 1)
    # Slack's entities are decoded for the service and encoded again on the way out.
    rows = await messages_of(engine, user)
    assert rows[0].content == "is 1 < 2 && 3 > 2?"
    assert slack.posts == [
        {
            "channel": "C0CHANNEL12",
            "thread_ts": parent,
            "text": echo("is 1 &lt; 2 &amp;&amp; 3 &gt; 2?"),
        }
    ]


async def test_bot_edited_and_foreign_messages_are_ignored(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start()
    other = slack_id("U")
    ignored = [
        dm(other, "beep", subtype="bot_message", bot_id="B0OTHERBOT1"),
        dm(other, "from an app", bot_id="B0OTHERBOT1"),
        dm(BOT_USER_ID, "my own reply", bot_id=BOT_ID),
        dm(other, "edited", subtype="message_changed"),
        dm(other, "   "),
        dm(other, f"<@{BOT_USER_ID}>"),
        {**dm(other, "in a channel, not addressed"), "channel_type": "channel"},
    ]
    for event in ignored:
        await deliver_event(run, slack, event)
    user = slack_id("U")
    await deliver_event(run, slack, dm(user, "real one"))
    await until(lambda: len(slack.posts) == 1)
    await until(lambda: run.dispatcher.in_flight == 0)
    assert slack.posts[0]["text"] == echo("real one")
    assert await messages_of(engine, other) == []
    assert await messages_of(engine, BOT_USER_ID) == []


async def test_long_reply_is_split_into_slack_sized_messages(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start(responder=LongResponder())
    user = slack_id("U")
    event = dm(user, "tell me everything")
    await deliver_event(run, slack, event)
    await until(lambda: len(slack.posts) == 3)
    assert [len(p["text"]) <= 4000 for p in slack.posts] == [True, True, True]
    assert {p["thread_ts"] for p in slack.posts} == {event["ts"]}
    assert " ".join(p["text"] for p in slack.posts) == LongResponder.text
    rows = await messages_of(engine, user)
    assert [r.content for r in rows] == ["tell me everything", LongResponder.text]
    await until(lambda: run.sent() == 3)  # counted once the response is read


async def test_slack_retry_of_the_same_event_is_answered_once(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start()
    user = slack_id("U")
    body = event_envelope(dm(user, "only once"))
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert (await post_event(run.events_url, body))[0] == 200
    assert (await post_event(run.events_url, body, headers=retry))[0] == 200
    await until(lambda: run.service.stats["duplicate"] == 1 and len(slack.posts) == 1)
    await until(lambda: run.dispatcher.in_flight == 0)
    assert len(slack.posts) == 1
    rows = await messages_of(engine, user)
    assert [r.role for r in rows] == ["user", "assistant"]


async def test_rate_limited_reply_is_sent_after_retry_after(start: Start, slack: FakeSlack) -> None:
    run = await start()
    slack.rate_limit_next = 1
    await deliver_event(run, slack, dm(slack_id("U"), "patience"))
    began = time.monotonic()
    await until(lambda: len(slack.posts) == 1, within=8)
    assert time.monotonic() - began >= 0.9  # Retry-After: 1 was honoured
    assert slack.post_attempts == 3  # the stream's start (twice) and stop
    assert [p["text"] for p in slack.posts] == [echo("patience")]
    await until(lambda: run.sent() == 1)  # counted once the response is read
    limited = run.dispatcher.metrics.registry.get_sample_value(
        "bot_platform_rate_limited_total", {"channel": "slack"}
    )
    assert limited == 1


async def test_slack_outage_is_retried(start: Start, slack: FakeSlack) -> None:
    run = await start()
    slack.fail_next = 2
    await deliver_event(run, slack, dm(slack_id("U"), "are you there"))
    await until(lambda: len(slack.posts) == 1, within=10)
    assert slack.post_attempts == 4  # the stream's start (three times) and stop
    await until(lambda: run.sent() == 1)  # counted once the response is read


@pytest.mark.parametrize(
    ("secret", "age"),
    [("not-the-signing-secret", 0), (SIGNING_SECRET, 301)],
    ids=["bad-signature", "stale-timestamp"],
)
async def test_unverified_requests_are_refused(
    start: Start, slack: FakeSlack, engine: AsyncEngine, secret: str, age: int
) -> None:
    run = await start()
    user = slack_id("U")
    body = event_envelope(dm(user, "let me in"))
    status, _ = await post_event(
        run.events_url, body, secret=secret, timestamp=int(time.time()) - age
    )
    assert status == 401
    unsigned = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(run.events_url, data=json.dumps(body), headers=unsigned) as response,
    ):
        assert response.status == 401
    assert await messages_of(engine, user) == []
    assert slack.posts == [] and run.dispatcher.in_flight == 0


async def test_url_verification_is_answered(start: Start) -> None:
    run = await start()
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    body = {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"}
    status, text = await post_event(run.events_url, body)
    assert status == 200
    assert json.loads(text) == {"challenge": challenge}


@pytest.mark.parametrize("raw", [b'{"type": "event_callback", "event": ', b"{\xff\xfe}"])
async def test_malformed_body_is_a_client_error(start: Start, slack: FakeSlack, raw: bytes) -> None:
    run = await start()
    status, _ = await post_event(run.events_url, raw)
    assert 400 <= status < 500
    assert slack.posts == []


async def test_stop_finishes_the_reply_in_flight(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    responder = SlowResponder(delay=1.0)
    run = await start(responder=responder)
    user = slack_id("U")
    await deliver_event(run, slack, dm(user, "slow one"))
    await asyncio.wait_for(responder.started.wait(), 5)
    url = run.events_url
    await run.adapter.stop()
    assert [p["text"] for p in slack.posts] == [echo("slow one")]
    assert len(await messages_of(engine, user)) == 2
    await asyncio.wait_for(run.task, 2)  # run() returned without an error
    assert not run.adapter.connected
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_event(url, event_envelope(dm(user, "too late")))


class ClosingDispatcher(Dispatcher):
    """A dispatcher the worker has already closed, as during a shutdown."""

    def __init__(
        self, service: ConversationService, metrics: Metrics, streams: StreamLedger | None
    ) -> None:
        super().__init__(service, metrics, streams)
        self.close()


@pytest.mark.parametrize("socket", [False, True], ids=["http", "socket-mode"])
async def test_events_are_not_acked_once_the_dispatcher_closes(
    start: Start, slack: FakeSlack, engine: AsyncEngine, socket: bool
) -> None:
    run = await start(socket=socket, dispatcher_class=ClosingDispatcher)
    user = slack_id("U")
    body = event_envelope(dm(user, "redeliver me"))
    if socket:
        envelope_id = await slack.push(body)
        await asyncio.sleep(0.5)
        assert envelope_id not in {ack.get("envelope_id") for ack in slack.acks}
    else:
        status, _ = await post_event(run.events_url, body)
        assert status == 503
    # Not acked: Slack delivers it again, to a worker that takes it.
    assert await messages_of(engine, user) == []
    assert slack.posts == []


# The inbox: an event is kept before Slack is told it arrived


async def inbox_of(engine: AsyncEngine, event_id: str) -> list[Any]:
    return await fetch(
        engine,
        "SELECT seq, holder FROM inbox WHERE channel_type = 'slack' "
        "AND platform_message_id = :event",
        event=event_id,
    )


@contextlib.asynccontextmanager
async def inbox_locked(engine: AsyncEngine) -> AsyncIterator[None]:
    """Every insert into the inbox waits (a SHARE lock in a transaction of the test's)."""
    async with engine.connect() as connection, connection.begin():
        await connection.execute(sqlalchemy.text("LOCK TABLE inbox IN SHARE MODE"))
        yield


async def until_an_insert_waits(engine: AsyncEngine, within: float = 10.0) -> None:
    """Until a statement inserting into the inbox waits for the test's lock."""
    sql = (
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO inbox%'"
    )
    async with asyncio.timeout(within):
        while not (await fetch(engine, sql))[0].n:  # noqa: ASYNC110 - Postgres state
            await asyncio.sleep(0.02)


async def acknowledged(run: Running, slack: FakeSlack, body: dict[str, Any], socket: bool) -> int:
    """Deliver the event as Slack does; the HTTP status once answered, or 200 once its
    envelope is acked."""
    if not socket:
        return (await post_event(run.events_url, body))[0]
    envelope_id = await slack.push(body)
    await until(lambda: envelope_id in {ack.get("envelope_id") for ack in slack.acks})
    return 200


@pytest.mark.parametrize("socket", [False, True], ids=["http", "socket-mode"])
async def test_an_event_is_in_the_inbox_before_it_is_acknowledged(
    start: Start, slack: FakeSlack, engine: AsyncEngine, socket: bool
) -> None:
    responder = GatedResponder()  # the LLM holds the reply until released
    run = await start(responder=responder, socket=socket)
    user = slack_id("U")
    body = event_envelope(dm(user, "keep me first"))
    async with inbox_locked(engine):
        ack = asyncio.create_task(acknowledged(run, slack, body, socket))
        await until_an_insert_waits(engine)
        assert not ack.done()  # no 200, no envelope ack, while the event is not kept
    assert await asyncio.wait_for(ack, 5) == 200
    # At the ack: kept, in this worker's hands, and its reply still being written.
    assert [row.holder for row in await inbox_of(engine, body["event_id"])] == [
        run.service.inbox.holder
    ]
    assert slack.posts == [] and not responder.release.is_set()
    responder.release.set()
    await until(lambda: len(slack.posts) == 1)
    assert slack.posts[0]["text"] == echo("keep me first")
    await run.service.inbox.flush()  # delivered: gone from the inbox
    assert await inbox_of(engine, body["event_id"]) == []


@pytest.mark.parametrize("socket", [False, True], ids=["http", "socket-mode"])
async def test_an_event_not_kept_in_time_is_refused_and_its_retry_answered_once(
    start: Start,
    slack: FakeSlack,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    socket: bool,
) -> None:
    """Postgres slow to keep the event: refused before Slack's 3 s are up rather than
    acknowledged late; the insert goes through later all the same, and Slack's retry
    finds it, and is answered once."""
    caplog.set_level(logging.INFO, logger="bot.channels.slack")
    monkeypatch.setattr(slack_channel, "KEEP_WITHIN", 0.5)
    run = await start(socket=socket)
    user = slack_id("U")
    body = event_envelope(dm(user, "slow to keep"))
    async with inbox_locked(engine):
        began = time.monotonic()
        if socket:
            first = await slack.push(body)
            await until(lambda: unacked_by_bolt(caplog, 503))
            assert first not in {ack.get("envelope_id") for ack in slack.acks}
        else:
            assert (await post_event(run.events_url, body))[0] == 503
        assert time.monotonic() - began < 3
    await until_kept(engine, body["event_id"])  # the insert went through after the refusal
    if socket:
        await acknowledged_retry(slack, body)
    else:
        retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}
        assert (await post_event(run.events_url, body, headers=retry))[0] == 200
    await until(lambda: len(slack.posts) == 1)
    await until(lambda: run.dispatcher.in_flight == 0)
    assert [p["text"] for p in slack.posts] == [echo("slow to keep")]
    assert [r.role for r in await messages_of(engine, user)] == ["user", "assistant"]


async def until_kept(engine: AsyncEngine, event_id: str, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await inbox_of(engine, event_id):  # noqa: ASYNC110 - Postgres state
            await asyncio.sleep(0.02)


async def acknowledged_retry(slack: FakeSlack, body: dict[str, Any]) -> None:
    envelope_id = await slack.push(body, retry_attempt=1)
    await until(lambda: envelope_id in {ack.get("envelope_id") for ack in slack.acks})


async def test_an_event_held_by_another_live_worker_is_acknowledged_and_left_to_it(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    """Slack retries an event another worker holds (its first delivery timed out, say):
    acknowledged, and not answered a second time here."""
    responder = GatedResponder()
    first = await start(responder=responder, socket=True)
    second = await start(responder=responder)
    user = slack_id("U")
    body = event_envelope(dm(user, "one worker is enough"))
    envelope_id = await slack.push(body)
    await until(lambda: envelope_id in {ack.get("envelope_id") for ack in slack.acks})
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert (await post_event(second.events_url, body, headers=retry))[0] == 200
    responder.release.set()
    await until(lambda: len(slack.posts) == 1)
    await until(lambda: first.dispatcher.in_flight == 0)
    assert second.dispatcher.metrics.registry.get_sample_value(
        "bot_messages_in_total", {"channel": "slack"}
    ) in (None, 0.0)
    assert [p["text"] for p in slack.posts] == [echo("one worker is enough")]


async def test_send_to_posts_in_the_message_thread_cut_to_slack_size(
    start: Start, slack: FakeSlack
) -> None:
    run = await start()
    thread = slack_ts(3)
    message = IncomingMessage(
        "slack", slack_id("U"), "tell me everything", platform_message_id="Ev0RESUMED1",
        chat_id="C0CHANNEL12", thread_id=thread, chat_kind=ChatKind.THREAD,
    )  # fmt: skip
    text = LongResponder.text + " <@U0OTHER> & co"
    assert await run.adapter.send_to(message, text) is True
    assert [(p["channel"], p["thread_ts"]) for p in slack.posts] == [("C0CHANNEL12", thread)] * 3
    assert all(len(p["text"]) <= 4000 for p in slack.posts)
    # Escaped as a live reply is: it can't ping anyone.
    assert " ".join(p["text"] for p in slack.posts).endswith("&lt;@U0OTHER&gt; &amp; co")
    await until(lambda: run.sent() == 3)


async def test_send_to_a_channel_gone_for_good_is_done_with(
    start: Start, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack refuses for good (channel_not_found): logged, and True, so that the inbox
    does not try it again and again."""
    run = await start()
    slack.gone_channels.add("C0GONE12345")
    message = IncomingMessage(
        "slack", slack_id("U"), "hello?", platform_message_id="Ev0GONE0001",
        chat_id="C0GONE12345", thread_id=slack_ts(), chat_kind=ChatKind.THREAD,
    )  # fmt: skip
    assert await run.adapter.send_to(message, "too late") is True
    assert slack.posts == []
    assert any("channel_not_found" in r.getMessage() for r in caplog.records)


async def test_resume_answers_an_event_from_the_inbox_in_its_thread(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    """What a worker's sweep does with an event a dead worker left: answered in its
    thread, under the writer's display name, stored once, and gone from the inbox."""
    run = await start()
    user = slack_id("U")
    slack.display_names[user] = "Grace Hopper"
    thread = slack_ts(5)
    message = IncomingMessage(
        "slack", user, "still there?", platform_message_id=f"Ev{user}",
        chat_id="C0CHANNEL12", thread_id=thread, chat_kind=ChatKind.THREAD,
    )  # fmt: skip
    assert (await run.service.receive(message)).taken
    await run.adapter.resume(message)
    assert slack.posts == [
        {"channel": "C0CHANNEL12", "thread_ts": thread, "text": echo("still there?")}
    ]
    assert await usernames(engine, "slack", user) == ["Grace Hopper"]
    assert [r.role for r in await messages_of(engine, user)] == ["user", "assistant"]
    await run.service.inbox.flush()
    assert await inbox_of(engine, f"Ev{user}") == []


# Socket Mode


async def test_socket_mode_event_is_acked_and_answered(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start(socket=True)
    await until(lambda: slack.socket_open)
    user = slack_id("U")
    event = dm(user, "over the socket")
    envelope_id = await slack.push(event_envelope(event))
    await until(lambda: len(slack.posts) == 1)
    assert {"envelope_id": envelope_id} in slack.acks
    assert slack.posts == [
        {"channel": "D0DMCHAN123", "thread_ts": event["ts"], "text": echo("over the socket")}
    ]
    assert [r.role for r in await messages_of(engine, user)] == ["user", "assistant"]
    assert run.adapter.connected


async def test_socket_mode_retry_is_acked_and_answered_once(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start(socket=True)
    user = slack_id("U")
    body = event_envelope(dm(user, "socket twice"))
    first = await slack.push(body)
    second = await slack.push(body, retry_attempt=1)
    await until(lambda: run.service.stats["duplicate"] == 1 and len(slack.posts) == 1)
    await until(lambda: {a.get("envelope_id") for a in slack.acks} >= {first, second})
    await until(lambda: run.dispatcher.in_flight == 0)
    assert len(slack.posts) == 1
    assert len(await messages_of(engine, user)) == 2


async def test_socket_mode_reconnects_by_itself(start: Start, slack: FakeSlack) -> None:
    run = await start(socket=True)
    assert slack.connections_opened == 1
    await slack.drop_sockets()
    await until(lambda: slack.connections_opened == 2 and slack.socket_open)
    await until(lambda: run.adapter.connected)
    await slack.push(event_envelope(dm(slack_id("U"), "after the reconnect")))
    await until(lambda: len(slack.posts) == 1)
    assert slack.posts[0]["text"] == echo("after the reconnect")


async def test_socket_mode_lost_for_good_ends_run(start: Start, slack: FakeSlack) -> None:
    run = await start(socket=True)
    run.adapter.reconnect_deadline = 0.5
    slack.refuse_connections = True
    await slack.drop_sockets()
    with pytest.raises(PlatformUnavailable):
        await asyncio.wait_for(run.task, 8)
    assert not run.adapter.connected


@pytest.mark.parametrize(
    ("socket", "overrides", "error"),
    [
        (False, {"slack_bot_token": "xoxb-revoked"}, PlatformRejected),
        (True, {"slack_app_token": "xapp-revoked"}, PlatformRejected),
        (False, {"slack_api_base_url": "http://127.0.0.1:9/api/"}, PlatformUnavailable),
    ],
    ids=["bad-bot-token", "bad-app-token", "api-unreachable"],
)
async def test_run_raises_when_it_cannot_connect(
    make_service: ServiceFactory,
    make_settings: Callable[..., Settings],
    slack: FakeSlack,
    socket: bool,
    overrides: dict[str, Any],
    error: type[Exception],
) -> None:
    settings = adapter_settings(make_settings, slack, socket, **overrides)
    adapter = SlackAdapter(slack_options(settings), Dispatcher(await make_service(), Metrics()))
    with pytest.raises(error):
        await asyncio.wait_for(adapter.run(), 5)
    assert not adapter.connected
    await adapter.stop()


# Display names


async def test_username_is_the_display_name_from_users_info(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start()
    user = slack_id("U")
    slack.display_names[user] = "Ada Lovelace"
    await deliver_event(run, slack, dm(user, "who am I"))
    await until(lambda: len(slack.posts) == 1)
    await deliver_event(run, slack, dm(user, "and now?"))
    await until(lambda: len(slack.posts) == 2)
    assert await usernames(engine, "slack", user) == ["Ada Lovelace"]
    assert slack.calls["users.info"] == 1  # the name is cached in the process


async def test_messages_of_a_new_user_keep_their_order_while_the_name_is_looked_up(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start()
    slack.users_info_delay = 0.3  # all three arrive while users.info is under way
    user = slack_id("U")
    for text in ("first", "second", "third"):
        await deliver_event(run, slack, dm(user, text))
    await until(lambda: len(slack.posts) == 3)
    assert slack.calls["users.info"] == 1
    rows = await messages_of(engine, user)
    assert [r.content for r in rows if r.role == "user"] == ["first", "second", "third"]
    # Each was answered with the ones before it in its context.
    assert {p["text"] for p in slack.posts} == {
        echo("first"),
        echo("second", 2),
        echo("third", 4),
    }


async def test_display_name_falls_back_to_the_full_name(
    start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await start()
    user = slack_id("U")
    slack.display_names[user] = ""  # never set one: Slack shows the full name
    await deliver_event(run, slack, dm(user, "hi"))
    await until(lambda: len(slack.posts) == 1)
    assert await usernames(engine, "slack", user) == [f"Real Name {user[-4:]}"]


@pytest.mark.parametrize("failure", ["user_not_found", "unavailable"])
async def test_username_is_the_user_id_when_users_info_fails(
    start: Start, slack: FakeSlack, engine: AsyncEngine, failure: str
) -> None:
    run = await start()
    user = slack_id("U")
    if failure == "user_not_found":
        slack.unknown_users.add(user)
    else:
        slack.users_info_down = True
    await deliver_event(run, slack, dm(user, "still answered"))
    await until(lambda: len(slack.posts) == 1)
    await deliver_event(run, slack, dm(user, "and again"))
    await until(lambda: len(slack.posts) == 2)
    assert slack.posts[0]["text"] == echo("still answered")
    assert await usernames(engine, "slack", user) == [user]
    # A refusal stays one (asked once); an outage passes (asked again next time).
    assert slack.calls["users.info"] == (1 if failure == "user_not_found" else 2)


async def test_display_names_cached_are_bounded(
    start: Start, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slack_channel, "NAMES_CACHED", 2)
    run = await start()
    first, second, third = slack_id("U"), slack_id("U"), slack_id("U")
    for n, user in enumerate([first, second, first, third, second, first], start=1):
        await deliver_event(run, slack, dm(user, f"message {n}"))
        await until(functools.partial(posted, slack, n))
    # first, second, (first cached), third drops second, second drops first, first again
    assert slack.calls["users.info"] == 5


# Supervision and the last guard


async def test_worker_restarts_slack_after_its_connection_is_lost_for_good(
    make_service: ServiceFactory,
    make_settings: Callable[..., Settings],
    slack: FakeSlack,
    engine: AsyncEngine,
    redis: object,
) -> None:
    dispatcher = Dispatcher(await make_service(), Metrics())
    adapter = SlackAdapter(
        slack_options(adapter_settings(make_settings, slack, socket=True)), dispatcher
    )
    adapter.reconnect_deadline = 0.3
    worker = Worker([adapter], dispatcher, None, shutdown_grace=5, restart_backoff=0.05)
    running = asyncio.create_task(worker.run())
    try:
        await until(lambda: adapter.connected)
        slack.refuse_connections = True
        await slack.drop_sockets()  # and no new websocket: the first run() raises
        await until(lambda: worker.restarts["slack"] >= 1, within=8)
        slack.refuse_connections = False
        await until(lambda: adapter.connected and slack.socket_open, within=8)
        user = slack_id("U")
        await slack.push(event_envelope(dm(user, "after the restart")))
        await until(lambda: len(slack.posts) == 1)
    finally:
        worker.request_stop()
        drained = await asyncio.wait_for(running, 10)
    assert drained is True
    assert slack.posts[0]["text"] == echo("after the restart")
    assert [r.role for r in await messages_of(engine, user)] == ["user", "assistant"]


class BrokenResponder(EchoResponder):
    """A responder with a bug: an error the service has no answer for."""

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        raise RuntimeError("responder bug")


async def test_unexpected_error_is_logged_with_its_traceback_and_counted(
    start: Start, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    run = await start(responder=BrokenResponder())
    body = await deliver_event(run, slack, dm(slack_id("U"), "boom"))
    await until(lambda: errors(run) == 1)
    (record,) = [r for r in caplog.records if body["event_id"] in r.getMessage()]
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert slack.posts == []


@pytest.mark.parametrize("socket", [False, True], ids=["http", "socket-mode"])
async def test_an_event_postgres_cannot_keep_is_not_acknowledged(
    start: Start,
    slack: FakeSlack,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    socket: bool,
) -> None:
    """Postgres down when the event arrives: it is not kept in the inbox, so Slack is not
    told it arrived (503; no envelope ack) and sends it again; nothing answered, and no
    adapter error (the outage is no bug)."""
    caplog.set_level(logging.INFO, logger="bot.channels.slack")
    run = await start(
        socket=socket,
        service_settings={
            "database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/gone",
            "db_connect_timeout_seconds": 0.5,
            "db_retry_deadline_seconds": 1.0,
        },
    )
    user = slack_id("U")
    body = event_envelope(dm(user, "anyone home?"))
    if socket:
        envelope_id = await slack.push(body)
        # Bolt's own word that it sends no ack for this envelope:
        await until(lambda: unacked_by_bolt(caplog, 503), within=10)
        assert envelope_id not in {ack.get("envelope_id") for ack in slack.acks}
    else:
        status, _ = await post_event(run.events_url, body)
        assert status == 503
    assert slack.posts == [] and errors(run) == 0
    assert await inbox_of(engine, body["event_id"]) == []
    assert await messages_of(engine, user) == []


def unacked_by_bolt(caplog: pytest.LogCaptureFixture, status: int) -> bool:
    said = f"Unsuccessful Bolt execution result (status: {status}"
    return any(said in record.getMessage() for record in caplog.records)


def errors(run: Running) -> float:
    value = run.dispatcher.metrics.registry.get_sample_value(
        "bot_adapter_errors_total", {"channel": "slack"}
    )
    return value or 0.0


def posted(slack: FakeSlack, count: int) -> bool:
    return len(slack.posts) == count


async def test_bolt_does_not_warn_of_the_token_it_reads_from_the_environment(
    start: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bolt reads SLACK_BOT_TOKEN itself, beside the client holding that very token, and
    said `token` will be unused at every start: chatter, not a warning."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    with caplog.at_level(logging.WARNING):
        await start()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
