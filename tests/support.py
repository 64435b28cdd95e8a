"""Helpers shared by the tests: queries, message builders, a counting responder."""

from __future__ import annotations

import os
import select
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.domain import IncomingMessage
from bot.responders import EchoResponder, ResponderRequest, ResponderResult
from bot.service import ConversationService

ServiceFactory = Callable[..., Awaitable[ConversationService]]

# Postgres settings for fault tests: every call, connect and the whole retry policy
# are bounded, so an outage is told within seconds.
FAST_POSTGRES: dict[str, Any] = {
    "db_command_timeout_seconds": 1.0,
    "db_connect_timeout_seconds": 1.0,
    "db_retry_deadline_seconds": 2.0,
    "db_pool_timeout_seconds": 1.0,
}


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


async def admin_fetch(server_url: str, sql: str) -> list[Any]:
    """Rows of `sql` run on a connection of its own (not through any pool under test)."""
    connection = await asyncpg.connect(server_url, timeout=5)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def terminate_backends(server_url: str, database: str, application_name: str) -> int:
    """pg_terminate_backend every connection of `application_name` to `database`."""
    rows = await admin_fetch(
        server_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND application_name = '{application_name}'",
    )
    return sum(1 for row in rows if row[0])


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker process talking to the same servers as `settings`."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env["DATABASE_URL"] = settings.database_url.get_secret_value()  # type: ignore[union-attr]
    env["REDIS_URL"] = settings.redis_url.get_secret_value()  # type: ignore[union-attr]
    env["REDIS_KEY_PREFIX"] = settings.redis_key_prefix
    env["LOG_LEVEL"] = "WARNING"
    return env


def read_line(process: subprocess.Popen[str], within: float = 120.0) -> str:
    """The next line a worker process prints, or an AssertionError after `within` s."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], within)
    assert ready, "a worker process did not answer in time"
    return process.stdout.readline()
