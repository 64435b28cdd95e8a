"""Helpers shared by the tests: queries, message builders, test responders, ports,
polling, and worker processes that start together."""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.streams import StreamLedger
from bot.channels.dispatch import Dispatcher
from bot.config import Settings, load_settings
from bot.domain import IncomingMessage, Reply, TextSink
from bot.responders import EchoResponder, ResponderRequest, ResponderResult
from bot.runtime import build_service
from bot.service import ConversationService
from bot.store.engine import create_engine
from bot.store.migrate import upgrade_to_head
from bot.stores import create_redis

ServiceFactory = Callable[..., Awaitable[ConversationService]]
ROOT = Path(__file__).resolve().parents[1]  # the repository

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
    """The messages of the user's conversations: their own, and the shared ones they
    wrote in (a Slack or Discord thread), oldest first."""
    return await fetch(
        engine,
        """SELECT m.role, m.content, m.model_used, m.token_count, m.platform_message_id,
                  m.conversation_id, m.timestamp
           FROM messages m
           WHERE m.conversation_id IN (
               SELECT c.id FROM conversations c JOIN users u ON u.id = c.user_id
               WHERE u.channel_user_id = :cuid
               UNION
               SELECT w.conversation_id FROM messages w JOIN users u ON u.id = w.author_id
               WHERE u.channel_user_id = :cuid)
           ORDER BY m.timestamp""",
        cuid=channel_user_id,
    )


async def conversation_of(engine: AsyncEngine, channel_user_id: str) -> list[tuple[str, str]]:
    """(role, text) of every message of the user's own conversations, as the context
    orders them (by time, a user message first on a tie)."""
    rows = await fetch(
        engine,
        """SELECT m.role, m.content FROM messages m
           JOIN conversations c ON c.id = m.conversation_id
           JOIN users u ON u.id = c.user_id
           WHERE u.channel_user_id = :user ORDER BY m.timestamp, m.role DESC""",
        user=channel_user_id,
    )
    return [(row.role, row.content) for row in rows]


async def usernames(engine: AsyncEngine, channel: str, channel_user_id: str) -> list[str]:
    """The display names stored for one user of `channel`."""
    rows = await fetch(
        engine,
        "SELECT username FROM users WHERE channel_type = :channel AND channel_user_id = :cuid",
        channel=channel,
        cuid=channel_user_id,
    )
    return [row.username for row in rows]


@asynccontextmanager
async def engine_on(url: str) -> AsyncIterator[AsyncEngine]:
    """A one-connection engine of the test's own on `url` (not any pool under test)."""
    engine = create_engine(Settings(_env_file=None), url, pool_size=1)
    try:
        yield engine
    finally:
        await engine.dispose()


async def migrate_to_head(url: str) -> None:
    async with engine_on(url) as engine:
        await upgrade_to_head(engine)


def msg(user: str, text: str, pid: str | None = None, channel: str = "console") -> IncomingMessage:
    return IncomingMessage(channel, user, text, username=user, platform_message_id=pid)


async def handled(service: ConversationService, message: IncomingMessage) -> Reply:
    """`handle` as an adapter calls it: and then the reply reaches the user."""
    reply = await service.handle(message)
    service.delivered(message, reply.kind)
    return reply


async def flush_cache(service: ConversationService) -> int:
    """Delete every key of the service's deployment, as an operator flushing Redis would;
    how many there were."""
    redis, pattern = service.cache.redis, service.cache.keys.all_pattern()
    names = [name async for name in redis.scan_iter(match=pattern)]
    return int(await redis.delete(*names)) if names else 0


def echo(text: str, earlier: int = 0) -> str:
    """The echo responder's answer to `text`, having seen `earlier` messages before it."""
    noun = "message" if earlier == 1 else "messages"
    return f'You said: "{text}" ({earlier} earlier {noun} in my context; model gpt-4o-mini)'


def assert_in_order(contents: Sequence[tuple[str, str]], context_limit: int = 20) -> None:
    """`contents` ((role, text) by timestamp) is a conversation answered by the echo
    responder in order: each message answered right after it, on all that came before
    (up to the context's length), whichever worker handled it."""
    roles = [role for role, _ in contents]
    assert roles == ["user", "assistant"] * (len(contents) // 2), roles
    for i in range(0, len(contents), 2):
        question, answer = contents[i][1], contents[i + 1][1]
        assert answer == echo(question, min(i, context_limit)), (i, question, answer)


class CountingResponder(EchoResponder):
    """The echo responder, counting the calls it gets (a real responder, not a mock)."""

    def __init__(self) -> None:
        self.calls: list[ResponderRequest] = []

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        self.calls.append(request)
        return await super().respond(request, on_text)


class SlowResponder(EchoResponder):
    """The echo responder, taking `delay` s: a message stays in flight meanwhile."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = asyncio.Event()

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        self.started.set()
        await asyncio.sleep(self.delay)
        return await super().respond(request, on_text)


class GatedResponder(EchoResponder):
    """The echo responder holding every reply until the test sets `release`: a slow LLM."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        self.started.set()
        await self.release.wait()
        return await super().respond(request, on_text)


class RecordingDispatcher(Dispatcher):
    """The real dispatcher, keeping the normalized messages the adapter handed it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[IncomingMessage] = []

    async def handle(self, message: IncomingMessage, on_text: TextSink | None = None) -> Reply:
        self.seen.append(message)
        return await super().handle(message, on_text)


def required_binary(found: str | None, package: str) -> str:
    """A server binary a test needs: CI installs it (.ci/run), so missing there is a
    failure; elsewhere the test is skipped, saying what to install."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"no {package} on this machine")
        pytest.skip(f"no {package} on this machine: install the {package} package")
    return found


def free_port() -> int:
    """A local port nothing listens on (at least for now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def until(condition: Callable[[], object], within: float = 10.0, what: str = "") -> None:
    """Poll until `condition()` holds; an AssertionError naming `what` after `within` s."""
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - state of servers and tasks on this loop
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what or 'the condition'}: not within {within} s") from None


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
    env["DATABASE_POOLER"] = settings.database_pooler
    env["LOG_LEVEL"] = "WARNING"
    return env


def read_line(process: subprocess.Popen[str], within: float = 120.0) -> str:
    """The next line a worker process prints, or an AssertionError after `within` s."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], within)
    assert ready, "a worker process did not answer in time"
    return process.stdout.readline()


def run_together(
    settings: Settings,
    commands: list[list[str]],
    within: float,
    *,
    env: dict[str, str] | None = None,
    before_go: Callable[[], object] = lambda: None,
) -> list[Any]:
    """Start a worker process per command, let them all go at once, and return the JSON
    line each prints then (the other side of `service_told_to_go`). `env` is added to
    each one's environment; `before_go` runs once all are ready (a fault to inject).
    The line that lets them go is "go T0": a start instant on the monotonic clock,
    which every process of the machine shares, for those that keep a schedule."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**worker_env(settings), **(env or {})},
            cwd=ROOT,
        )
        for command in commands
    ]
    try:
        assert [read_line(w, within) for w in workers] == ["ready\n"] * len(workers)
        before_go()
        start = time.monotonic() + GO_MARGIN
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"go {start}\n")
            worker.stdin.flush()
        results = [json.loads(read_line(w, within)) for w in workers]
        assert [w.wait(timeout=within) for w in workers] == [0] * len(workers)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the workers said: {_last_words(workers)}") from exc
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.communicate(timeout=30)
    return results


GO_MARGIN = 0.2  # s between "go" and the start instant it names: every worker has read it


def _last_words(workers: list[subprocess.Popen[str]]) -> list[str]:
    """The end of each worker's stderr (it is killed first if still running)."""
    words = []
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        _, err = worker.communicate(timeout=30)
        words.append(err[-3000:])
    return words


@asynccontextmanager
async def service_told_to_go() -> AsyncIterator[ConversationService]:
    """In a worker process of `run_together`: a service built from the environment's
    settings, connected, once "ready" was printed and a line came on stdin."""
    settings = load_settings(_env_file=None)
    assert settings.database_url is not None and settings.redis_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value())
    redis = create_redis(settings, settings.redis_url.get_secret_value())
    service = build_service(settings, engine, redis)
    try:
        await redis.ping()  # connected before the start, so that the workers go together
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        yield service
        # As a worker does at shutdown: the last delivered events are marked done, or
        # the other worker would wait out their claims and answer them again.
        await service.close()
    finally:
        await redis.aclose()
        await engine.dispose()


STREAM_LEASE = 30.0  # seconds, on the `streams` fixture's clock


def lapse_leases(streams: StreamLedger) -> None:
    """Move the `streams` fixture's clock past every lease: nobody renewed them."""
    assert isinstance(streams.clock, ManualClock)
    streams.clock.now += STREAM_LEASE + 1


class ManualClock:
    """A clock that moves only when a test moves it (unix-time-like seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class HangingStream(EchoResponder):
    """Streams `words`, then hangs as a dying worker's reply does: `shown` is set once
    the words are out, and the reply never ends on its own."""

    def __init__(self, words: str = "one two three") -> None:
        self.words = words
        self.shown = asyncio.Event()

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        if on_text is not None:
            for word in self.words.split():
                await on_text(f"{word} ")
        self.shown.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
