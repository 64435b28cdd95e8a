"""What the `bot ops` tests share: running a command, and seeding data through the service.

Commands run in process through bot.cli.main (in a thread: it calls asyncio.run), with
the test's settings in the environment and output captured. Data is seeded through
the real conversation service. Tests that need exact Postgres counts use a channel
name of their own, since the test database is shared by the whole run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.cli import main
from bot.config import Settings
from bot.service import ConversationService
from bot.stores import keys_for
from tests.support import ServiceFactory, msg


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def data(self) -> Any:
        """The --json output of a command that succeeded."""
        assert self.code == 0, (self.code, self.err)
        return self.json()

    def json(self) -> Any:
        """The --json output, whatever the exit code."""
        return json.loads(self.out)


Ops = Callable[..., Coroutine[Any, Any, Ran]]


@pytest.fixture
def ops(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Ops]:
    """`bot ops ARGS` with this test's settings in the environment, plus per-call
    overrides (e.g. PURGE_BATCH_SIZE="4"). No COLUMNS: output is piped, as in scripts."""
    assert settings.database_url is not None and settings.redis_url is not None
    base = {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
    }
    monkeypatch.delenv("COLUMNS", raising=False)
    root = logging.getLogger()

    async def run(*args: str, **env: str) -> Ran:
        for name, value in {**base, **env}.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        handlers, level = root.handlers[:], root.level
        try:
            code = await asyncio.to_thread(main, ["ops", *args])
        except SystemExit as exc:  # argparse refusing the arguments
            code = int(exc.code or 0)
        finally:  # main() installed a handler on this capture's stderr: take it away
            root.handlers[:] = handlers
            root.setLevel(level)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    yield run


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return keys_for(settings)


@pytest.fixture
async def clean_flags(engine: AsyncEngine) -> AsyncIterator[None]:
    """Flags and channel and chat configs are global to the test database (other tests add rows
    for channels of their own): start with none and leave none behind."""

    async def clean() -> None:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("DELETE FROM feature_flags")
            await connection.exec_driver_sql("DELETE FROM channel_configs")
            await connection.exec_driver_sql("DELETE FROM chat_configs")

    await clean()
    yield
    await clean()


def channel_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def chat(make_service: ServiceFactory, channel: str, user: str, *texts: str) -> None:
    """Messages of one user through a new service (a worker of its own)."""
    service = await make_service()
    for message in texts:
        await service.handle(msg(user, message, channel=channel))


async def seed(service: ConversationService, user: str, *texts: str) -> uuid.UUID:
    """Messages through the real service; the user's conversation id."""
    reply = None
    for message in texts:
        reply = await service.handle(msg(user, message))
    assert reply is not None and reply.conversation_id is not None
    return reply.conversation_id


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(sql), params)


async def keys_of(redis: Redis, keys: Keys) -> set[str]:
    return {key.decode() async for key in redis.scan_iter(match=keys.all_pattern())}
