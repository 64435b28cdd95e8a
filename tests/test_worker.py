"""The worker: supervision, graceful shutdown, health/readiness/metrics, `bot run`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.channels.base import ChannelAdapter
from bot.channels.dispatch import Dispatcher, ShuttingDown
from bot.config import Settings
from bot.domain import IncomingMessage, Reply
from bot.embedded import EmbeddedRedis
from bot.health import HealthServer
from bot.metrics import Metrics
from bot.responders import EchoResponder, ResponderRequest, ResponderResult
from bot.worker import Worker
from tests.channels.test_console import chat_env
from tests.conftest import ROOT
from tests.support import ServiceFactory, messages_of, msg, new_user


class QueueChannel(ChannelAdapter):
    """A channel whose platform is an asyncio queue: real adapter plumbing, no SDK."""

    name = "queue"

    def __init__(self, settings: Settings, dispatcher: Dispatcher, crashes: int = 0) -> None:
        super().__init__(settings, dispatcher)
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


class SlowResponder(EchoResponder):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = asyncio.Event()

    async def respond(self, request: ResponderRequest) -> ResponderResult:
        self.started.set()
        await asyncio.sleep(self.delay)
        return await super().respond(request)


async def test_crashed_adapter_is_restarted_without_stopping_the_others(
    make_service: ServiceFactory, settings: Settings
) -> None:
    dispatcher = Dispatcher(await make_service(), Metrics())
    flaky = QueueChannel(settings, dispatcher, crashes=2)
    flaky.name = "flaky"
    steady = QueueChannel(settings, dispatcher)
    worker = Worker([flaky, steady], dispatcher, None, shutdown_grace=5, restart_backoff=0.05)
    running = asyncio.create_task(worker.run())
    user = new_user()
    await steady.inbox.put(msg(user, "steady"))
    await _until(lambda: flaky.connected and len(steady.replies) == 1)
    assert worker.restarts["flaky"] == 2 and flaky.runs == 3
    await flaky.inbox.put(msg(user, "flaky works"))
    await _until(lambda: len(flaky.replies) == 1)
    worker.request_stop()
    assert await running is True


async def test_shutdown_finishes_the_message_in_flight(
    make_service: ServiceFactory, settings: Settings, engine: AsyncEngine, redis: Redis
) -> None:
    responder = SlowResponder(delay=0.5)
    dispatcher = Dispatcher(await make_service(responder=responder), Metrics())
    channel = QueueChannel(settings, dispatcher)
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
    counters = await redis.hgetall(Keys.from_settings(settings).stats())
    assert counters[b"exchange"] == b"1" and counters[b"session_miss"] == b"1"


async def _refused(dispatcher: Dispatcher, message: IncomingMessage) -> bool:
    try:
        await dispatcher.handle(message)
    except ShuttingDown:
        return True
    return False


async def test_health_readiness_and_metrics(
    make_service: ServiceFactory, settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics)
    dispatcher = Dispatcher(service, metrics)
    channel = QueueChannel(settings, dispatcher)
    health = HealthServer(engine, service.cache.redis, metrics, [channel])
    port = await health.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
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
    finally:
        await health.stop()
    assert 'bot_messages_in_total{channel="console"} 2.0' in exposition
    assert 'bot_cache_requests_total{kind="session",result="hit"} 1.0' in exposition
    assert 'bot_responder_latency_seconds_count{responder="echo"} 2.0' in exposition
    assert "bot_reply_latency_seconds_bucket" in exposition
    assert "bot_rate_limited_total 0.0" in exposition


async def test_readiness_names_redis_when_it_is_down(
    make_service: ServiceFactory, engine: AsyncEngine, tmp_path: Path
) -> None:
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_server.start()
    service = await make_service(redis_url=redis_server.url)
    health = HealthServer(engine, service.cache.redis, Metrics(), [])
    redis_server.stop()
    port = await health.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.get(f"http://127.0.0.1:{port}/readyz")
            body = await response.json()
    finally:
        await health.stop()
    assert response.status == 503
    assert body["redis"].startswith("down") and body["postgres"] == "ok"


def test_bot_run_without_channels_explains_what_enables_them(tmp_path: Path) -> None:
    env = chat_env(None, tmp_path)
    env["LOG_LEVEL"] = "INFO"
    done = subprocess.run(
        [sys.executable, "-m", "bot", "run"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 1
    for setting in ("DISCORD_BOT_TOKEN", "TELEGRAM_BOT_TOKEN", "SLACK_SIGNING_SECRET"):
        assert setting in done.stderr
    assert "no channel is configured" in done.stderr and "Traceback" not in done.stderr


def test_bot_run_serves_health_and_exits_cleanly_on_sigterm(
    settings: Settings, redis: object, tmp_path: Path
) -> None:
    port = _free_port()
    env = chat_env(settings, tmp_path) | {"HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--channels", "console", "--user", new_user()],
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - state owned by other tasks
            await asyncio.sleep(0.02)
