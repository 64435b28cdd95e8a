"""Invariant 7 for the worker: `bot run` serving Discord, Telegram (webhook) and Slack
against their local fakes, with every secret set and DEBUG logs, shows no secret in its
output, its HTTP endpoints, its webhook answers or the replies it sends; and /healthz,
/readyz and /metrics carry no user content."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.channels.telegram import SECRET_HEADER
from bot.emulators.discord_api import TOKEN as DISCORD_TOKEN
from bot.emulators.discord_api import FakeDiscord
from bot.emulators.slack_api import APP_TOKEN as SLACK_APP_TOKEN
from bot.emulators.slack_api import BOT_TOKEN as SLACK_BOT_TOKEN
from bot.emulators.slack_api import SIGNING_SECRET as SLACK_SIGNING_SECRET
from bot.emulators.slack_api import FakeSlack, event_envelope, sign
from bot.emulators.telegram_api import TOKEN as TELEGRAM_TOKEN
from bot.emulators.telegram_api import FakeBotApi, private_update, user
from tests.security.conftest import PYTHON, SECRETS, TELEGRAM_WEBHOOK_SECRET, Captured
from tests.support import free_port, until

pytestmark = pytest.mark.timeout(120)

WITHIN = 30.0  # seconds for the worker to connect, or a reply to arrive
HOOK_PATH = "/telegram/hook"


@dataclass
class Platforms:
    discord: FakeDiscord
    telegram: FakeBotApi
    slack: FakeSlack


@pytest.fixture
async def platforms() -> AsyncIterator[Platforms]:
    found = Platforms(FakeDiscord(), FakeBotApi(), FakeSlack())
    await found.discord.start()
    await found.telegram.start()
    await found.slack.start()
    yield found
    await found.slack.stop()
    await found.telegram.close()
    await found.discord.stop()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def hook(session: aiohttp.ClientSession, url: str, body: bytes, secret: str) -> str:
    headers = {"Content-Type": "application/json", SECRET_HEADER: secret}
    async with session.post(url, data=body, headers=headers) as response:
        return f"{response.status} {await response.text()}"


def slack_dm(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "channel_type": "im",
        "user": "USCAN" + uuid.uuid4().hex[:6].upper(),
        "text": text,
        "channel": "D0DMCHAN123",
        "ts": "1700000000.000100",
        "client_msg_id": str(uuid.uuid4()),
    }


@dataclass
class Worker:
    session: aiohttp.ClientSession
    err: list[str]  # standard error so far, a line per item


@asynccontextmanager
async def worker(
    env: dict[str, str], channels: str, cwd: Path, captured: Captured, *, connected: bool = True
) -> AsyncIterator[Worker]:
    """`bot run --channels CHANNELS` once it serves /readyz (with every channel connected
    unless told otherwise); stopped by SIGTERM at exit, which must be clean, with its
    output captured."""
    process = await asyncio.create_subprocess_exec(
        str(PYTHON if PYTHON.exists() else sys.executable),
        "-m",
        "bot",
        "run",
        "--channels",
        channels,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    out: list[str] = []
    err: list[str] = []
    readers = [
        asyncio.create_task(_read(process.stdout, out)),
        asyncio.create_task(_read(process.stderr, err)),
    ]
    try:
        async with aiohttp.ClientSession() as session:
            readiness = await ready(session, f"http://127.0.0.1:{env['HTTP_PORT']}")
            if connected:
                wanted = dict.fromkeys(channels.split(","), "connected")
                assert readiness["channels"] == wanted, readiness
            yield Worker(session, err)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), WITHIN)
        await asyncio.gather(*readers)
        captured.add(f"{channels} worker stdout", "".join(out))
        captured.add(f"{channels} worker stderr", "".join(err))
    assert process.returncode == 0, "".join(err)[-2000:]


async def _read(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for line in stream:
        into.append(line.decode(errors="replace"))


async def ready(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """/readyz once every channel says connected, or else once it answers (bounded)."""
    found: dict[str, Any] = {}
    try:
        async with asyncio.timeout(WITHIN):
            while True:
                try:
                    status, body = await get(session, f"{base}/readyz")
                    found = dict(json.loads(body))
                    if status == 200:
                        return found
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
    except TimeoutError:
        return found


def worker_env(scan_env: dict[str, str], **settings: str) -> dict[str, str]:
    return scan_env | {
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(free_port()),
        "LLM_BASE_URL": "",  # the echo responder: replies quote the user's text
        **settings,
    }


async def test_worker_with_every_channel_shows_no_secret(
    scan_env: dict[str, str], platforms: Platforms, tmp_path: Path
) -> None:
    discord, telegram, slack = platforms.discord, platforms.telegram, platforms.slack
    hook_port = free_port()
    env = worker_env(
        scan_env,
        DISCORD_API_BASE_URL=discord.api_url,
        TELEGRAM_API_BASE_URL=telegram.base_url,
        TELEGRAM_WEBHOOK_URL=f"https://bot.example.com{HOOK_PATH}",
        TELEGRAM_WEBHOOK_LISTEN="127.0.0.1",
        TELEGRAM_WEBHOOK_PORT=str(hook_port),
        SLACK_API_BASE_URL=slack.api_url,
        LOG_FORMAT="json",
    )
    captured, base = Captured(), f"http://127.0.0.1:{env['HTTP_PORT']}"
    words = {name: f"{name}-words-{uuid.uuid4().hex[:8]}" for name in ("discord", "tg", "slack")}
    async with worker(env, "discord,telegram,slack", tmp_path, captured) as running:
        session = running.session
        await discord.push_message(discord.message(discord.owner, words["discord"]))
        sender = user(7001, "scan_user")
        body = json.dumps(private_update(telegram, sender, words["tg"])).encode()
        hook_url = f"http://127.0.0.1:{hook_port}{HOOK_PATH}"
        right = await hook(session, hook_url, body, TELEGRAM_WEBHOOK_SECRET)
        wrong = await hook(session, hook_url, body, "not-the-secret")
        await slack.push(event_envelope(slack_dm(words["slack"])))
        await until(lambda: len(discord.posts()) >= 1, WITHIN, "discord reply")
        await until(lambda: len(telegram.sent) >= 1, WITHIN, "telegram reply")
        await until(lambda: len(slack.posts) >= 1, WITHIN, "slack reply")
        endpoints = {
            path: await get(session, base + path) for path in ("/healthz", "/readyz", "/metrics")
        }
    captured.add("webhook, right secret", right)
    captured.add("webhook, wrong secret", wrong)
    for path, (status, text) in endpoints.items():
        assert status == 200, (path, text)
        captured.add(path, text)
    replies = [p["content"] for p in discord.posts()] + [m["text"] for m in telegram.sent]
    for reply in [*replies, *(p["text"] for p in slack.posts)]:
        captured.add("reply sent", reply)

    assert right.startswith("200") and wrong.startswith("403")
    assert any('"level": "debug"' in text for where, text in captured.items if "stderr" in where)
    # Each secret was really used (the fakes refuse any other token), so the scan means
    # something.
    assert discord.posts() and telegram.sent and slack.posts and slack.acks
    assert telegram.token == TELEGRAM_TOKEN
    assert telegram.webhook["secret_token"] == TELEGRAM_WEBHOOK_SECRET
    assert {DISCORD_TOKEN, SLACK_BOT_TOKEN, SLACK_APP_TOKEN} <= set(SECRETS)
    assert captured.leaks(SECRETS) == []
    # The endpoints show counts and states, never what users wrote.
    for path, (_, text) in endpoints.items():
        assert not any(word in text for word in words.values()), path
    assert 'bot_messages_in_total{channel="telegram"} 1.0' in endpoints["/metrics"][1]
    assert json.loads(endpoints["/healthz"][1]) == {"status": "ok"}
    assert set(json.loads(endpoints["/readyz"][1])) == {"status", "postgres", "redis", "channels"}


async def test_slack_events_endpoint_shows_no_secret(
    scan_env: dict[str, str], platforms: Platforms, tmp_path: Path
) -> None:
    """Slack's HTTP Events API, where the signing secret is in use: signed, mis-signed."""
    slack, slack_port = platforms.slack, free_port()
    without_socket_mode = {k: v for k, v in scan_env.items() if k != "SLACK_APP_TOKEN"}
    env = worker_env(
        without_socket_mode,
        SLACK_API_BASE_URL=slack.api_url,
        SLACK_LISTEN="127.0.0.1",
        SLACK_PORT=str(slack_port),
    )
    captured, url = Captured(), f"http://127.0.0.1:{slack_port}/slack/events"
    async with worker(env, "slack", tmp_path, captured) as running:
        session = running.session
        raw = json.dumps(event_envelope(slack_dm("signed words"))).encode()
        answers = []
        for secret in (SLACK_SIGNING_SECRET, "not-the-signing-secret"):
            stamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "X-Slack-Request-Timestamp": str(stamp),
                "X-Slack-Signature": sign(raw, stamp, secret),
            }
            async with session.post(url, data=raw, headers=headers) as response:
                answers.append((response.status, await response.text()))
        await until(lambda: len(slack.posts) >= 1, WITHIN, "slack reply")
    for status, text in answers:
        captured.add(f"slack events answer {status}", text)

    assert [status for status, _ in answers] == [200, 401]
    assert SLACK_SIGNING_SECRET in SECRETS
    assert captured.leaks(SECRETS) == []


def logged(lines: list[str], text: str) -> Callable[[], bool]:
    return lambda: any(text in line for line in lines)


async def test_platforms_refusing_the_tokens_show_no_secret(
    scan_env: dict[str, str], platforms: Platforms, tmp_path: Path
) -> None:
    """Tokens the platforms refuse: python-telegram-bot, for one, puts the token it was
    given in its InvalidToken message. Each channel says once which setting to fix and
    is not restarted; with none left, the worker stops (exit 2) by itself."""
    wrong = {
        "DISCORD_BOT_TOKEN": "MTA-refused.discord-token.scan",
        "TELEGRAM_BOT_TOKEN": "424242:REFUSED-telegram-token-scan",
        "SLACK_BOT_TOKEN": "xoxb-refused-slack-bot-token-scan",
        "SLACK_APP_TOKEN": "xapp-refused-slack-app-token-scan",
    }
    env = worker_env(
        scan_env | wrong,
        DISCORD_API_BASE_URL=platforms.discord.api_url,
        TELEGRAM_API_BASE_URL=platforms.telegram.base_url,
        SLACK_API_BASE_URL=platforms.slack.api_url,
        LOG_FORMAT="text",
    )
    process = await asyncio.create_subprocess_exec(
        str(PYTHON if PYTHON.exists() else sys.executable),
        *("-m", "bot", "run", "--channels", "discord,telegram,slack"),
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), WITHIN)
    captured = Captured()
    captured.add("refused worker stdout", out.decode())
    captured.add("refused worker stderr", err.decode())

    assert process.returncode == 2, err.decode()[-2000:]
    lines = err.decode().splitlines()
    for setting in ("DISCORD_BOT_TOKEN", "TELEGRAM_BOT_TOKEN", "SLACK_BOT_TOKEN"):
        told = [line for line in lines if f"rejected {setting}" in line and "stopped" in line]
        assert len(told) == 1, lines  # once: not restarted
    assert "no channel left to serve" in lines[-1] and "Traceback" not in err.decode()
    assert captured.leaks([*SECRETS, *wrong.values(), "REFUSED-telegram-token-scan"]) == []
