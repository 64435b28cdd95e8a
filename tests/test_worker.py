"""The worker: supervision, graceful shutdown, health/readiness/metrics, `bot run`."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.streams import Orphan, StreamLedger
from bot.channels.base import ChannelAdapter
from bot.channels.dispatch import Dispatcher
from bot.config import Settings
from bot.domain import IncomingMessage, Reply
from bot.embedded import EmbeddedRedis
from bot.errors import ShuttingDown
from bot.health import HealthServer
from bot.metrics import Metrics
from bot.service import INTERRUPTED_NOTE, UNAVAILABLE_TEXT
from bot.store.engine import create_engine
from bot.stores import keys_for
from bot.worker import INBOX_GIVE_UP_TRIES, Worker
from tests.channels.test_console import chat_env
from tests.support import (
    ROOT,
    ServiceFactory,
    SlowResponder,
    echo,
    execute,
    fetch,
    free_port,
    messages_of,
    msg,
    new_user,
    read_line,
    until,
)


class QueueChannel(ChannelAdapter):
    """A channel whose platform is an asyncio queue: real adapter plumbing, no SDK."""

    name = "queue"

    def __init__(self, dispatcher: Dispatcher, crashes: int = 0) -> None:
        super().__init__(dispatcher)
        self.inbox: asyncio.Queue[IncomingMessage] = asyncio.Queue()
        self.replies: list[Reply] = []
        self.crashes = crashes
        self.runs = 0
        self._connected = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._connected

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise ConnectionError("platform unreachable")
        self._connected = True
        while True:
            message = await self.inbox.get()
            task = asyncio.create_task(self._deliver(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, message: IncomingMessage) -> None:
        try:
            self.replies.append(await self.dispatcher.handle(message))
        except ShuttingDown:
            return

    async def stop(self) -> None:
        self._connected = False


async def test_crashed_adapter_is_restarted_without_stopping_the_others(
    make_service: ServiceFactory,
) -> None:
    dispatcher = Dispatcher(await make_service(), Metrics())
    flaky = QueueChannel(dispatcher, crashes=2)
    flaky.name = "flaky"
    steady = QueueChannel(dispatcher)
    worker = Worker([flaky, steady], dispatcher, None, shutdown_grace=5, restart_backoff=0.05)
    running = asyncio.create_task(worker.run())
    user = new_user()
    await steady.inbox.put(msg(user, "steady"))
    await until(lambda: flaky.connected and len(steady.replies) == 1)
    assert worker.restarts["flaky"] == 2 and flaky.runs == 3
    await flaky.inbox.put(msg(user, "flaky works"))
    await until(lambda: len(flaky.replies) == 1)
    worker.request_stop()
    assert await running is True


class EndingChannel(QueueChannel):
    """A QueueChannel that keeps the replies it was given to end (bot/cache/streams.py)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher)
        self.ended: list[tuple[Orphan, str]] = []

    async def end_stream(self, orphan: Orphan, note: str) -> None:
        self.ended.append((orphan, note))


async def test_the_worker_renews_its_streams_and_ends_those_of_dead_workers(
    make_service: ServiceFactory, redis: Redis, settings: Settings
) -> None:
    lease = 0.6  # real seconds: the worker tends every 0.2 s
    streams = StreamLedger(redis, keys_for(settings), lease)
    dispatcher = Dispatcher(await make_service(), Metrics(), streams)
    channel = EndingChannel(dispatcher)
    dead_workers = StreamLedger(redis, keys_for(settings), lease)
    left = dead_workers.booking("queue")  # a reply its worker died writing
    await left.shown({"message": "1"}, "half a")
    live = streams.booking("queue")  # a reply this worker is still writing
    await live.shown({"message": "2"}, "still going")

    worker = Worker([channel], dispatcher, None, shutdown_grace=5)
    running = asyncio.create_task(worker.run())
    try:
        await until(lambda: len(channel.ended) == 1, within=10)
        await asyncio.sleep(lease * 2)  # several leases: renewed, never ended
    finally:
        worker.request_stop()
        assert await running is True

    assert channel.ended == [(Orphan("queue", {"message": "1"}, "half a"), INTERRUPTED_NOTE)]
    assert await dead_workers.orphans("queue") == []  # the live one is not lapsed
    assert dispatcher.metrics.orphans_ended.labels("queue")._value.get() == 1
    await live.ended()


class ShortLivedChannel(QueueChannel):
    """Each run lasts the next of `lifetimes` seconds, then crashes; then it stays up."""

    def __init__(self, dispatcher: Dispatcher, lifetimes: list[float]) -> None:
        super().__init__(dispatcher)
        self.lifetimes = lifetimes

    async def run(self) -> None:
        if self.runs < len(self.lifetimes):
            self.runs += 1
            await asyncio.sleep(self.lifetimes[self.runs - 1])
            raise ConnectionError("connection lost")
        await super().run()


async def test_restart_backoff_starts_again_after_a_run_that_held_up(
    make_service: ServiceFactory,
) -> None:
    dispatcher = Dispatcher(await make_service(), Metrics())
    channel = ShortLivedChannel(dispatcher, lifetimes=[0, 0, 0, 1.2, 0])
    worker = Worker([channel], dispatcher, None, 5, restart_backoff=0.05, stable_run=1.0)
    running = asyncio.create_task(worker.run())
    await until(lambda: channel.connected)
    worker.request_stop()
    assert await running is True
    # Three quick crashes back off further each time; a run of 1.2 s (longer than
    # stable_run) was a working connection, so its crash starts from the beginning.
    assert list(worker.restart_delays["queue"]) == pytest.approx([0.05, 0.1, 0.2, 0.05, 0.1])


async def test_shutdown_finishes_the_message_in_flight(
    make_service: ServiceFactory, settings: Settings, engine: AsyncEngine, redis: Redis
) -> None:
    responder = SlowResponder(delay=0.5)
    dispatcher = Dispatcher(await make_service(responder=responder), Metrics())
    channel = QueueChannel(dispatcher)
    worker = Worker([channel], dispatcher, None, shutdown_grace=5)
    running = asyncio.create_task(worker.run())
    user = new_user()
    await channel.inbox.put(msg(user, "slow one"))
    await asyncio.wait_for(responder.started.wait(), 5)
    worker.request_stop()
    await asyncio.sleep(0)
    late = await _refused(dispatcher, msg(user, "too late"))

    assert await running is True
    assert late and len(channel.replies) == 1
    rows = await messages_of(engine, user)
    assert [r.content for r in rows if r.role == "user"] == ["slow one"]
    # The worker's tallies reached the deployment-wide counters on the way out.
    counters = await redis.hgetall(keys_for(settings).stats())
    assert counters[b"exchange"] == b"1" and counters[b"session_miss"] == b"1"


async def _refused(dispatcher: Dispatcher, message: IncomingMessage) -> bool:
    try:
        await dispatcher.handle(message)
    except ShuttingDown:
        return True
    return False


@asynccontextmanager
async def serving(health: HealthServer) -> AsyncIterator[str]:
    """The base URL of `health`, serving on a free port until the block ends."""
    port = await health.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await health.stop()


async def test_health_readiness_and_metrics(
    make_service: ServiceFactory, engine: AsyncEngine, tmp_path: Path
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics)
    dispatcher = Dispatcher(service, metrics)
    channel = QueueChannel(dispatcher)
    health = HealthServer(engine, service.cache.redis, metrics, [channel])
    async with serving(health) as base, aiohttp.ClientSession() as http:
        assert (await http.get(f"{base}/healthz")).status == 200
        not_ready = await http.get(f"{base}/readyz")
        assert not_ready.status == 503
        assert (await not_ready.json())["channels"] == {"queue": "disconnected"}
        channel._connected = True
        ready = await http.get(f"{base}/readyz")
        body = await ready.json()
        assert ready.status == 200, body
        assert body["postgres"] == "ok" and body["redis"] == "ok"

        user = new_user()
        await dispatcher.handle(msg(user, "count me"))
        await dispatcher.handle(msg(user, "count me too"))
        exposition = await (await http.get(f"{base}/metrics")).text()
    assert 'bot_messages_in_total{channel="console"} 2.0' in exposition
    assert 'bot_cache_requests_total{kind="session",result="hit"} 1.0' in exposition
    assert 'bot_responder_latency_seconds_count{responder="echo"} 2.0' in exposition
    assert "bot_reply_latency_seconds_bucket" in exposition
    assert "bot_rate_limited_total 0.0" in exposition


async def test_readiness_names_redis_when_it_is_down(
    make_service: ServiceFactory, engine: AsyncEngine, own_redis: EmbeddedRedis
) -> None:
    service = await make_service(redis_url=own_redis.url)
    health = HealthServer(engine, service.cache.redis, Metrics(), [])
    own_redis.stop()
    async with serving(health) as base, aiohttp.ClientSession() as http:
        response = await http.get(f"{base}/readyz")
        body = await response.json()
    assert response.status == 503
    assert body["redis"].startswith("down") and body["postgres"] == "ok"


async def test_readiness_names_postgres_when_it_is_down(settings: Settings, redis: Redis) -> None:
    unreachable = create_engine(settings, f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    health = HealthServer(unreachable, redis, Metrics(), [])
    try:
        async with serving(health) as base, aiohttp.ClientSession() as http:
            response = await http.get(f"{base}/readyz")
            body = await response.json()
    finally:
        await unreachable.dispose()
    assert response.status == 503
    assert body["status"] == "not ready"
    assert body["postgres"].startswith("down") and body["redis"] == "ok"


async def test_readiness_of_a_channel_for_a_load_balancer(
    make_service: ServiceFactory, engine: AsyncEngine, own_redis: EmbeddedRedis
) -> None:
    """/readyz?channel=NAME, a load balancer's health check: the channel's listener, not
    the stores every worker shares (Redis down only degrades a worker); and from the
    shutdown on, 503 on both, so that no new webhook is sent to a worker refusing it."""
    metrics = Metrics()
    service = await make_service(metrics=metrics, redis_url=own_redis.url)
    dispatcher = Dispatcher(service, metrics)
    channel = QueueChannel(dispatcher)
    health = HealthServer(
        engine, service.cache.redis, metrics, [channel], closing=lambda: dispatcher.closing
    )

    async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
        async with http.get(url) as response:
            return response.status, await response.json()

    async with serving(health) as base, aiohttp.ClientSession() as http:
        assert (await get(http, f"{base}/readyz?channel=queue"))[0] == 503  # not connected
        channel._connected = True
        assert (await get(http, f"{base}/readyz?channel=queue"))[0] == 200
        own_redis.stop()
        whole, body = await get(http, f"{base}/readyz")
        assert (whole, body["status"]) == (503, "not ready") and body["redis"].startswith("down")
        status, body = await get(http, f"{base}/readyz?channel=queue")
        assert (status, body["status"]) == (200, "ready") and body["redis"].startswith("down")
        status, body = await get(http, f"{base}/readyz?channel=queue,telegram")
        assert status == 503 and body["channels"]["telegram"] == "not served"
        dispatcher.close()
        for url in (f"{base}/readyz", f"{base}/readyz?channel=queue"):
            status, body = await get(http, url)
            assert (status, body["status"]) == (503, "shutting down"), url


async def _scrape(metrics: Metrics, engine: AsyncEngine, redis: Redis) -> dict[str, float]:
    """GET /metrics of a health server on these metrics: every sample, by name."""
    health = HealthServer(engine, redis, metrics, [])
    async with serving(health) as base, aiohttp.ClientSession() as http:
        exposition = await (await http.get(f"{base}/metrics")).text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if not sample.labels
    }


async def test_metrics_count_redelivered_events(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    metrics = Metrics()
    dispatcher = Dispatcher(await make_service(metrics=metrics), metrics)
    user, event = new_user(), f"evt-{uuid.uuid4().hex}"
    assert (await _scrape(metrics, engine, redis))["bot_deduplicated_total"] == 0
    await dispatcher.handle(msg(user, "once", pid=event))
    await dispatcher.handle(msg(user, "once", pid=event))  # the platform sent it again
    assert (await _scrape(metrics, engine, redis))["bot_deduplicated_total"] == 1


async def test_metrics_count_redis_errors(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    dispatcher = Dispatcher(service, metrics)
    assert (await _scrape(metrics, engine, redis))["bot_redis_errors_total"] == 0
    reply = await dispatcher.handle(msg(new_user(), "is redis there?"))
    assert reply.text is not None and reply.text.startswith('You said: "is redis there?"')
    scraped = await _scrape(metrics, engine, redis)
    assert scraped["bot_redis_errors_total"] >= 1
    assert scraped["bot_postgres_errors_total"] == 0


async def test_metrics_count_postgres_errors(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    metrics = Metrics()
    service = await make_service(
        metrics=metrics,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/gone",
        db_connect_timeout_seconds=0.5,
        db_retry_deadline_seconds=1.0,
    )
    dispatcher = Dispatcher(service, metrics)
    assert (await _scrape(metrics, engine, redis))["bot_postgres_errors_total"] == 0
    reply = await dispatcher.handle(msg(new_user(), "is postgres there?"))
    assert reply.text == UNAVAILABLE_TEXT
    scraped = await _scrape(metrics, engine, redis)
    assert scraped["bot_postgres_errors_total"] == 1
    assert scraped["bot_postgres_retries_total"] >= 1  # refused, retried, then given up
    assert scraped["bot_redis_errors_total"] == 0


def test_bot_run_without_channels_explains_what_enables_them(tmp_path: Path) -> None:
    env = chat_env(None, tmp_path)
    env["LOG_LEVEL"] = "INFO"
    done = _bot_run(env)
    assert done.returncode == 2
    for setting in ("DISCORD_BOT_TOKEN", "TELEGRAM_BOT_TOKEN", "SLACK_SIGNING_SECRET"):
        assert setting in done.stderr
    assert "no channel is configured" in done.stderr and "Traceback" not in done.stderr


def test_bot_run_serves_health_and_exits_cleanly_on_sigterm(
    settings: Settings, redis: object, tmp_path: Path
) -> None:
    """Only the channels named start, here the console, though Discord and Telegram are
    configured too (at addresses nothing answers, in case they started after all)."""
    port = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = chat_env(settings, tmp_path) | {
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
        "DISCORD_BOT_TOKEN": "discord-token",
        "DISCORD_API_BASE_URL": f"{nowhere}/api",
        "TELEGRAM_BOT_TOKEN": "123:telegram-token",
        "TELEGRAM_API_BASE_URL": f"{nowhere}/bot",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--channels", " console ", "--user", new_user()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write("hello worker\n")
        worker.stdin.flush()
        assert "hello worker" in worker.stdout.readline()
        status = _get_json(f"http://127.0.0.1:{port}/readyz")
        assert status["channels"] == {"console": "connected"}
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate(timeout=10)


def _bot_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "run", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_bot_run_refuses_an_unknown_channel_as_a_usage_error(tmp_path: Path) -> None:
    done = _bot_run(chat_env(None, tmp_path), "--channels", "console, irc")
    assert done.returncode == 2
    assert "unknown channel(s) irc; choose from console, discord, telegram, slack" in done.stderr
    assert "usage: bot run" in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir()), "nothing may start on a bad argument"


def test_bot_run_names_the_setting_a_named_channel_lacks(tmp_path: Path) -> None:
    done = _bot_run(chat_env(None, tmp_path), "--channels", "console,telegram")
    assert done.returncode == 2
    assert done.stderr.strip() == "bot: channel telegram needs TELEGRAM_BOT_TOKEN"
    assert not any(tmp_path.iterdir()), "nothing may start without the credential"


def test_bot_run_on_a_terminal_without_credentials_opens_the_console(
    settings: Settings, redis: object, tmp_path: Path
) -> None:
    """The whole terminal is the chat's: one warning saying why there is no platform,
    the chat, and no INFO line in between (they go to DATA_DIR/bot.log)."""
    env = chat_env(settings, tmp_path) | {
        "HTTP_PORT": str(free_port()),
        "HTTP_HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
    }
    shown = _on_a_terminal(["run"], env, b"hello terminal\n", 'You said: "hello terminal"')
    [warning] = [line for line in shown.splitlines() if "WARNING" in line]
    assert "no channel is configured (" in warning and "opening the console chat" in warning
    for setting in ("DISCORD_BOT_TOKEN", "TELEGRAM_BOT_TOKEN", "SLACK_SIGNING_SECRET"):
        assert setting in warning
    assert " INFO " not in shown and f"The log goes to {tmp_path / 'bot.log'}" in shown
    logged = (tmp_path / "bot.log").read_text()
    assert "INFO    bot.channels.dispatch: console message from" in logged


def test_bot_chat_on_a_terminal_shows_only_the_chat(
    settings: Settings, redis: object, tmp_path: Path
) -> None:
    env = chat_env(settings, tmp_path) | {"LOG_LEVEL": "INFO"}
    shown = _on_a_terminal(["chat"], env, b"/help\n", "/history")
    assert " INFO " not in shown and " WARNING " not in shown, shown
    assert "/history" in shown  # the help, as the chat shows it
    assert "bot.channels.dispatch: console message from" in (tmp_path / "bot.log").read_text()


def _on_a_terminal(command: list[str], env: dict[str, str], line: bytes, answer: str) -> str:
    """`bot COMMAND` with a terminal for stdin, stdout and stderr: one line typed once
    the prompt shows, then Ctrl-D once `answer` shows; what the terminal showed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", *command, "--user", new_user()],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=ROOT,
    )
    os.close(terminal)
    try:
        shown = _read_until(controller, "you> ")
        os.write(controller, line)
        shown += _read_until(controller, answer)
        os.write(controller, b"\x04")  # Ctrl-D ends the chat (and a worker serving only it)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        os.close(controller)
    return shown


def _read_until(fd: int, wanted: str, within: float = 30.0) -> str:
    """What the terminal shows until `wanted` appears (bounded in time)."""
    deadline = time.monotonic() + within
    shown = ""
    while wanted not in shown:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{wanted!r} not shown; the terminal showed {shown!r}")
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the process closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"{wanted!r} not shown before the end: {shown!r}")
            shown += chunk.decode(errors="replace")
    return shown


def _get_json(url: str) -> dict[str, object]:
    import urllib.request

    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.loads(response.read()))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_bot_run_on_a_port_in_use_names_the_setting_in_one_line(
    settings: Settings, redis: object, tmp_path: Path
) -> None:
    """A second `bot run` beside the first, say: one line naming HTTP_PORT, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = chat_env(settings, tmp_path) | {"HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1"}
        done = _bot_run(env, "--channels", "console")

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"bot: cannot listen on 127.0.0.1:{port} (HTTP_PORT={port}): address already in use; "
        "set HTTP_PORT to a free port (another bot already running?)"
    ]


def test_a_channel_that_cannot_connect_says_so_in_one_line_per_retry(
    settings: Settings, redis: object, tmp_path: Path
) -> None:
    """No network for Telegram: each restart is one line with its cause and the next
    delay, growing; no traceback, for a failure that is the platform's, not a bug."""
    nowhere = f"http://127.0.0.1:{free_port()}/bot"
    env = chat_env(settings, tmp_path) | {
        "HTTP_PORT": str(free_port()),
        "HTTP_HOST": "127.0.0.1",
        "TELEGRAM_BOT_TOKEN": "123:telegram-token",
        "TELEGRAM_API_BASE_URL": nowhere,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--channels", "telegram"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # the log, read as read_line reads stdout
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        told = [read_line(worker) for _ in range(3)]
        worker.send_signal(signal.SIGTERM)
        rest = worker.communicate(timeout=30)[0]
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0
    cause = "(PlatformUnavailable: Telegram unavailable: httpx.ConnectError"
    assert "channel telegram is down " + cause in told[0] and told[0].endswith("in 1.0 s\n")
    assert [line.split("WARNING ")[1] for line in told[1:]] == [
        f"bot.worker: channel telegram failed again {cause}: All connection attempts failed); "
        f"restarting in {delay} s\n"
        for delay in ("2.0", "4.0")
    ]
    assert "Traceback" not in "".join(told) + rest


class ResumingChannel(QueueChannel):
    """A QueueChannel that answers events from the inbox too, keeping what it sends."""

    resumes = True

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher)
        self.sent_to: list[tuple[str | None, str]] = []

    async def send_to(
        self, message: IncomingMessage, text: str, reply_id: uuid.UUID | None = None
    ) -> bool:
        self.sent_to.append((message.platform_message_id, text))
        return True


async def test_the_sweep_answers_a_dead_workers_events_and_drops_one_that_always_fails(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    fast = {"inbox_lease_seconds": 1.0, "inbox_sweep_seconds": 0.1}
    dead = await make_service(**fast)
    dispatcher = Dispatcher(await make_service(**fast), Metrics())
    channel = ResumingChannel(dispatcher)
    channel.name = "console"  # the dead worker's messages' channel
    user, poisoned = new_user(), new_user()
    for n in (1, 2):
        assert (await dead.receive(msg(user, f"m{n}", pid=f"{user}:{n}"))).taken
    assert (await dead.receive(msg(poisoned, "bad", pid=f"{poisoned}:1"))).taken
    # Its every handling failed (a bug): tried more often than any deferral would be.
    await execute(
        engine,
        "UPDATE inbox SET tries = :tries WHERE platform_message_id = :pid",
        tries=INBOX_GIVE_UP_TRIES + 1,
        pid=f"{poisoned}:1",
    )
    worker = Worker([channel], dispatcher, None, shutdown_grace=5)
    running = asyncio.create_task(worker.run())
    left = "SELECT count(*) AS n FROM inbox WHERE message->>'channel_user_id' = ANY(:users)"
    await until(lambda: len(channel.sent_to) == 2, within=20)

    async def inbox_empty() -> bool:
        return (await fetch(engine, left, users=[user, poisoned]))[0].n == 0

    for _ in range(100):
        if await inbox_empty():
            break
        await asyncio.sleep(0.1)
    worker.request_stop()
    await running
    assert channel.sent_to == [(f"{user}:1", echo("m1")), (f"{user}:2", echo("m2", 2))]
    assert await inbox_empty()
    assert [r.content for r in await messages_of(engine, poisoned)] == []
