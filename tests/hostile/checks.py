"""Assertions shared by the hostile-input tests."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from bot.cache.hotstate import decode_context
from bot.cache.keys import Keys
from bot.domain import IncomingMessage
from bot.service import ConversationService


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
    key = Keys.from_settings(service.settings).context(conversation)
    return [(m.role, m.content) for m in map(decode_context, await redis.lrange(key, 0, -1))]
