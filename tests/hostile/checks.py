"""Assertions and requests shared by the hostile-input tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.codec import decode_context
from bot.domain import IncomingMessage
from bot.service import ConversationService
from tests.support import fetch


def assert_well_formed(message: IncomingMessage, channel: str) -> None:
    """What the service may rely on: every field text of the right shape, or None."""
    assert message.channel == channel
    assert isinstance(message.channel_user_id, str) and message.channel_user_id, message
    assert isinstance(message.text, str), message  # empty: the service says so
    for optional in (message.username, message.platform_message_id, message.thread_id):
        assert optional is None or isinstance(optional, str), message
    assert message.chat_id is None or (isinstance(message.chat_id, str) and message.chat_id)


async def cached_context(
    redis: Redis, service: ConversationService, conversation: uuid.UUID
) -> list[tuple[str, str]]:
    """The context list of a conversation as Redis holds it, newest first."""
    key = service.cache.keys.context(conversation)
    return [(m.role, m.content) for m in map(decode_context, await redis.lrange(key, 0, -1))]


async def post_status(
    url: str,
    body: bytes | AsyncIterator[bytes],
    headers: dict[str, str],
    content_type: str | None,
) -> int:
    """The status of a POST of `body` with `headers`, and a Content-Type only when one is
    given (aiohttp would otherwise add its own)."""
    if content_type is not None:
        headers = {**headers, "Content-Type": content_type}
    async with (
        aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status


async def stored_since(engine: AsyncEngine, channel: str, since: datetime) -> list[Any]:
    """The messages of `channel` stored since `since` (content, platform message id)."""
    return await fetch(
        engine,
        "SELECT content, platform_message_id FROM messages"
        " WHERE channel_type = :channel AND timestamp >= :since",
        channel=channel,
        since=since,
    )
