"""The Slack Events API endpoint refuses what Slack did not send with a 4xx, storing nothing.

tests/channels/test_slack.py covers a bad signature, a timestamp 301 s old, an unsigned
request and bodies cut short or not UTF-8. Here: timestamps from the future or not a
number, a valid request replayed with a new timestamp, oversized bodies, wrong content
types, signed JSON of the wrong shape, nesting too deep to parse, and random bodies,
signed or not, none of which may be a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.dispatch import Dispatcher
from bot.channels.registry import slack_options
from bot.channels.slack import SlackAdapter
from bot.config import Settings
from bot.emulators.slack_api import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    event_envelope,
    sign,
)
from bot.metrics import Metrics
from tests.hostile.checks import post_status, stored_since
from tests.hostile.strategies import json_values
from tests.hostile.test_slack_translation import events
from tests.support import ServiceFactory, until

pytestmark = pytest.mark.timeout(90)
HOSTILE = settings.get_profile("hostile")
LIMIT = 4096  # WEBHOOK_MAX_BODY_BYTES here, so that "oversized" stays small


@pytest.fixture
async def events_url(
    slack: FakeSlack,
    make_service: ServiceFactory,
    make_settings: Callable[..., Settings],
    redis: object,
) -> AsyncIterator[str]:
    """An HTTP-mode adapter on a real service; its Request URL."""
    settings = make_settings(
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_base_url=slack.api_url,
        slack_listen="127.0.0.1",
        slack_port=0,
        webhook_max_body_bytes=LIMIT,
    )
    adapter = SlackAdapter(slack_options(settings), Dispatcher(await make_service(), Metrics()))
    task = asyncio.create_task(adapter.run())
    await until(lambda: adapter.connected or task.done())
    assert adapter.connected, task
    yield f"http://127.0.0.1:{adapter.port}/slack/events"
    await adapter.stop()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)


async def post(
    url: str,
    body: bytes | AsyncIterator[bytes],
    *,
    timestamp: str | None = None,
    signature: str | None = None,
    content_type: str | None = "application/json",
) -> int:
    """POST as Slack does: signed over `body` (when bytes) unless told otherwise."""
    stamp = str(int(time.time())) if timestamp is None else timestamp
    headers = {"X-Slack-Request-Timestamp": stamp}
    if signature is None and isinstance(body, bytes) and stamp.isdigit():
        signature = sign(body, int(stamp))
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    return await post_status(url, body, headers, content_type)


def dm_body(text: str = "hello") -> bytes:
    event = {
        "type": "message",
        "channel_type": "im",
        "user": "U0HOSTILE1",
        "text": text,
        "channel": "D0DMCHAN123",
        "ts": f"{time.time():.6f}",
    }
    return json.dumps(event_envelope(event)).encode()


ARABIC_DIGITS = "".join(chr(0x0660 + int(d)) for d in "1700000000")  # int() takes them


@pytest.mark.parametrize(
    "timestamp",
    ["", "abc", "1e9", " 1700000000", ARABIC_DIGITS, "-1", "in 400 s", "9" * 40],
)
async def test_timestamps_that_are_not_now_are_refused(
    events_url: str, slack: FakeSlack, engine: AsyncEngine, timestamp: str
) -> None:
    since = datetime.now(UTC)
    body = dm_body()
    if timestamp == "in 400 s":
        timestamp = str(int(time.time()) + 400)
    # Signed as Slack would sign it with that header, where that can be computed.
    signature = sign(body, int(timestamp)) if timestamp.strip().isdigit() else "v0=00"

    assert await post(events_url, body, timestamp=timestamp, signature=signature) == 401
    assert await stored_since(engine, "slack", since) == [] and slack.posts == []


async def test_a_captured_request_replayed_with_a_new_timestamp_is_refused(
    events_url: str, slack: FakeSlack, engine: AsyncEngine
) -> None:
    """The signature covers the timestamp: an eavesdropper cannot refresh an old request."""
    since = datetime.now(UTC)
    body = dm_body("replayed")
    old = int(time.time()) - 600
    captured = sign(body, old)

    assert await post(events_url, body, timestamp=str(old), signature=captured) == 401
    fresh = str(int(time.time()))
    assert await post(events_url, body, timestamp=fresh, signature=captured) == 401
    assert await stored_since(engine, "slack", since) == [] and slack.posts == []


async def test_oversized_bodies_are_refused_with_413(
    events_url: str, slack: FakeSlack, engine: AsyncEngine
) -> None:
    since = datetime.now(UTC)
    body = dm_body("x" * LIMIT)

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    assert await post(events_url, body) == 413  # declared by Content-Length
    stamp = str(int(time.time()))
    assert (
        await post(events_url, chunked(), timestamp=stamp, signature=sign(body, int(stamp))) == 413
    )
    assert await post(events_url, body, signature="v0=unsigned") == 413
    await asyncio.sleep(0.2)
    assert await stored_since(engine, "slack", since) == [] and slack.posts == []
    assert await post(events_url, dm_body("y" * (LIMIT - 1000))) == 200
    await until(lambda: len(slack.posts) == 1)


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
async def test_wrong_content_type_is_refused_with_415(
    events_url: str, engine: AsyncEngine, content_type: str | None
) -> None:
    since = datetime.now(UTC)
    assert await post(events_url, dm_body(), content_type=content_type) == 415
    assert await stored_since(engine, "slack", since) == []


async def test_an_event_sent_as_a_form_is_refused_with_400(
    events_url: str, engine: AsyncEngine
) -> None:
    # A form is how Slack sends a click on a reply's feedback buttons (`payload=`); an
    # event body in one is no form Slack sends.
    since = datetime.now(UTC)
    content_type = "application/x-www-form-urlencoded"
    assert await post(events_url, dm_body(), content_type=content_type) == 400
    assert await stored_since(engine, "slack", since) == []


WRONG_SHAPES: list[Any] = [
    [],
    "event_callback",
    42,
    None,
    {"type": "event_callback", "event": "a message"},
    {"type": "event_callback", "event": ["message"]},
    {"type": "event_callback", "event": {"type": ["message"], "user": {"id": 1}}},
    {"type": "event_callback", "event": {"type": "message", "channel_type": "im", "user": 5,
                                         "text": ["hi"], "channel": {}}},
    {"type": "event_callback", "event": {"type": "app_mention", "user": "U1", "channel": "C1",
                                         "text": {"rich": "text"}, "ts": 1.5}},
    {"type": "event_callback", "event": {}, "team_id": 7, "api_app_id": [], "authorizations": 3},
    {"type": "event_callback", "event": {"type": "message"}, "enterprise": "E1", "team": ["T"]},
    {"type": "url_verification"},
    {"type": "url_verification", "challenge": {"not": "a string"}},
    {"type": ["event_callback"], "event": None},
    {"ssl_check": "1"},
]  # fmt: skip


@pytest.mark.parametrize("shape", WRONG_SHAPES, ids=range(len(WRONG_SHAPES)))
async def test_signed_json_of_the_wrong_shape_is_never_a_5xx(
    events_url: str, slack: FakeSlack, engine: AsyncEngine, shape: Any
) -> None:
    since = datetime.now(UTC)
    status = await post(events_url, json.dumps(shape).encode())
    assert status < 500
    await asyncio.sleep(0.1)
    assert await stored_since(engine, "slack", since) == [] and slack.posts == []


async def test_json_nested_too_deep_is_refused_with_400(events_url: str) -> None:
    deep = b'{"type": "event_callback", "event": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert len(deep) <= LIMIT
    assert await post(events_url, deep) == 400


def envelopes() -> st.SearchStrategy[bytes]:
    return events().map(lambda event: json.dumps(event_envelope(event)).encode())


@settings(HOSTILE, max_examples=80)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values().map(lambda value: json.dumps(value).encode()),
        st.dictionaries(
            st.sampled_from(["type", "event", "team_id", "challenge"]), json_values()
        ).map(lambda value: json.dumps(value).encode()),
        envelopes(),
        envelopes(),
    ),
    signed=st.sampled_from([True, True, False]),
)
async def test_random_bodies_never_get_a_5xx(events_url: str, body: bytes, signed: bool) -> None:
    status = await post(events_url, body, signature=None if signed else "v0=forged")
    assert status < 500, body
    if not signed:
        assert status in (400, 401)  # 400: not UTF-8, so it cannot even be checked
