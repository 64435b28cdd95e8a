"""The Telegram webhook refuses what is not Telegram's with a 4xx, and stores nothing.

tests/channels/test_telegram.py covers a wrong or missing secret, a body cut short,
non-UTF-8, a JSON array and an update without ids. Here: oversized bodies (declared
and chunked), wrong content types, JSON of the wrong shape that python-telegram-bot
chokes on, nesting too deep to parse, and random bodies, none of which may be a 5xx.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.dispatch import Dispatcher
from bot.channels.registry import telegram_options
from bot.channels.telegram import SECRET_HEADER, TelegramAdapter
from bot.config import Settings
from bot.emulators.telegram_api import TOKEN, FakeBotApi, private_update, user
from bot.metrics import Metrics
from tests.hostile.checks import post_status, stored_since
from tests.hostile.strategies import json_values
from tests.hostile.test_telegram_translation import update_bodies
from tests.support import ServiceFactory, free_port

pytestmark = pytest.mark.timeout(90)
HOSTILE = settings.get_profile("hostile")
SECRET = "hostile-webhook-secret_0123456789"
LIMIT = 4096  # WEBHOOK_MAX_BODY_BYTES here, so that "oversized" stays small


@pytest.fixture
async def hook(
    telegram: FakeBotApi,
    make_service: ServiceFactory,
    make_settings: Callable[..., Settings],
    redis: object,
) -> AsyncIterator[str]:
    """A webhook-mode adapter on a real service; its URL."""
    port = free_port()
    settings = make_settings(
        telegram_bot_token=TOKEN,
        telegram_api_base_url=telegram.base_url,
        telegram_webhook_url="https://bot.example.com/telegram/hook",
        telegram_webhook_listen="127.0.0.1",
        telegram_webhook_port=port,
        telegram_webhook_secret=SECRET,
        webhook_max_body_bytes=LIMIT,
    )
    adapter = TelegramAdapter(
        telegram_options(settings), Dispatcher(await make_service(), Metrics())
    )
    task = asyncio.create_task(adapter.run())
    await telegram.wait_for(lambda: adapter.connected or task.done())
    assert adapter.connected, task
    yield f"http://127.0.0.1:{port}/telegram/hook"
    await asyncio.wait_for(adapter.stop(), 10)
    await asyncio.wait_for(task, 10)


async def post(
    url: str,
    body: bytes | AsyncIterator[bytes],
    *,
    secret: str | None = SECRET,
    content_type: str | None = "application/json",
) -> int:
    headers = {} if secret is None else {SECRET_HEADER: secret}
    return await post_status(url, body, headers, content_type)


def valid_update(server: FakeBotApi, text: str = "hello") -> dict[str, Any]:
    sender = user(424242, "hostile")
    return private_update(server, sender, text)


async def chunks(body: bytes, size: int = 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_oversized_bodies_are_refused_with_413(
    hook: str, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    since = datetime.now(UTC)
    padded = valid_update(telegram, "x" * LIMIT)
    body = json.dumps(padded).encode()
    assert len(body) > LIMIT

    assert await post(hook, body) == 413  # declared by Content-Length
    assert await post(hook, chunks(body)) == 413  # chunked: cut off as it arrives
    assert await post(hook, body, secret="wrong") == 413  # refused before anything else
    await asyncio.sleep(0.2)
    assert telegram.sent == [] and await stored_since(engine, "telegram", since) == []
    # Just under the limit is fine.
    fits = valid_update(telegram, "y" * (LIMIT - len(body) + LIMIT - 50))
    assert len(json.dumps(fits).encode()) <= LIMIT
    assert await post(hook, json.dumps(fits).encode()) == 200
    await telegram.wait_for(lambda: len(telegram.sent) == 1)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
async def test_wrong_content_type_is_refused_with_415(
    hook: str, telegram: FakeBotApi, engine: AsyncEngine, content_type: str | None
) -> None:
    since = datetime.now(UTC)
    body = json.dumps(valid_update(telegram)).encode()

    assert await post(hook, body, content_type=content_type) == 415
    assert await post(hook, body, content_type="application/json; charset=utf-8") == 200
    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    assert len(await stored_since(engine, "telegram", since)) == 2  # the accepted one and its reply


WRONG_SHAPES = [
    {"update_id": "1", "message": {"message_id": 1, "date": 0, "chat": {"id": 1}}},
    {"update_id": 1, "message": "hello"},
    {"update_id": 1, "message": []},
    {"update_id": 1, "message": {"message_id": 2, "date": 10**20, "chat": {"id": 1}}},
    {"update_id": 1, "message": {"message_id": 2, "date": "today", "chat": {"id": 1}}},
    {"update_id": 1, "message": {"message_id": 2, "date": 0, "chat": "a chat"}},
    {"update_id": 1, "message": {"message_id": 2, "date": 0, "chat": {"id": 1, "type": "private"},
                                 "entities": {"not": "a list"}}},
    {"update_id": True},
    {},
]  # fmt: skip


@pytest.mark.parametrize("body", WRONG_SHAPES, ids=range(len(WRONG_SHAPES)))
async def test_json_of_the_wrong_shape_is_refused_with_400(
    hook: str, telegram: FakeBotApi, engine: AsyncEngine, body: dict[str, Any]
) -> None:
    since = datetime.now(UTC)
    assert await post(hook, json.dumps(body).encode()) == 400
    assert await stored_since(engine, "telegram", since) == []


async def test_json_nested_too_deep_is_refused_with_400(hook: str) -> None:
    deep = b'{"update_id": 1, "message": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert len(deep) <= LIMIT
    assert await post(hook, deep) == 400


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Bytes, JSON of any shape, and updates with fields dropped or of the wrong type."""
    return st.one_of(
        st.binary(max_size=200),
        json_values().map(lambda value: json.dumps(value).encode()),
        update_bodies().map(lambda value: json.dumps(value).encode()),
        update_bodies().map(lambda value: json.dumps(value).encode()),
    )


@settings(HOSTILE, max_examples=80)
@given(
    body=raw_bodies(),
    secret=st.sampled_from([SECRET, SECRET, None, "nope"]),
    content_type=st.sampled_from(["application/json", "application/json", "text/plain"]),
)
async def test_random_bodies_never_get_a_5xx(
    hook: str, body: bytes, secret: str | None, content_type: str
) -> None:
    status = await post(hook, body, secret=secret, content_type=content_type)

    expected = 415 if content_type != "application/json" else 400
    assert status in ((403,) if secret != SECRET else (200, expected)), status
