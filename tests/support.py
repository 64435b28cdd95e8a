"""Helpers shared by the tests: queries, message builders, a counting responder."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import IncomingMessage
from bot.responders import EchoResponder, ResponderRequest, ResponderResult
from bot.service import ConversationService

ServiceFactory = Callable[..., Awaitable[ConversationService]]


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


async def fetch(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list(await connection.execute(text(sql), params))


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(sql), params)


async def messages_of(engine: AsyncEngine, channel_user_id: str) -> list[Any]:
    return await fetch(
        engine,
        """SELECT m.role, m.content, m.model_used, m.token_count, m.platform_message_id,
                  m.conversation_id, m.timestamp
           FROM messages m JOIN conversations c ON c.id = m.conversation_id
           JOIN users u ON u.id = c.user_id
           WHERE u.channel_user_id = :cuid ORDER BY m.timestamp""",
        cuid=channel_user_id,
    )


def msg(user: str, text: str, pid: str | None = None, channel: str = "console") -> IncomingMessage:
    return IncomingMessage(channel, user, text, username=user, platform_message_id=pid)


class CountingResponder(EchoResponder):
    """The echo responder, counting the calls it gets (a real responder, not a mock)."""

    def __init__(self) -> None:
        self.calls: list[ResponderRequest] = []

    async def respond(self, request: ResponderRequest) -> ResponderResult:
        self.calls.append(request)
        return await super().respond(request)
