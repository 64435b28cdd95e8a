"""The scaled deployment of deploy/scaled/, run once on this machine: three real
`bot run` workers behind a real HAProxy started from the repository's haproxy.cfg (the
addresses, ports and certificate of the test substituted), talking to the local
platform servers of bot/emulators/.

- Telegram's webhook updates and Slack's signed events are posted over TLS to HAProxy,
  as the platforms do (each again until it is answered 200), which hands them to any
  ready worker; some are delivered twice on purpose, at once (a platform's redelivery).
- Discord's two gateway shards are split between the first two workers, as in the
  compose file: private messages come on shard 0, the guild's on shard 1.
- Mid-run the third worker gets SIGTERM: it finishes what it has, refuses the rest with
  503 (which HAProxy sends to another worker), and HAProxy's health check on its
  /readyz?channel=... takes it out.

Each simulated user sends their next message once the previous one was answered.
At the end: every event answered exactly once (counted at the platform servers),
stored once, each user's messages and replies in order, and the events spread over
the workers.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import signal
import ssl
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.telegram import SECRET_HEADER
from bot.config import Settings
from bot.emulators import discord_api, slack_api, telegram_api
from bot.emulators.discord_api import FakeDiscord
from bot.emulators.slack_api import FakeSlack
from bot.emulators.telegram_api import FakeBotApi
from tests.reliability.conftest import FIGURES
from tests.support import (
    ROOT,
    assert_in_order,
    conversation_of,
    free_port,
    required_binary,
    until,
    worker_env,
)

pytestmark = pytest.mark.timeout(120)

HAPROXY_CFG = ROOT / "deploy" / "scaled" / "haproxy.cfg"
HOOK_PATH = "/telegram/webhook"  # as TELEGRAM_WEBHOOK_URL in deploy/scaled/docker-compose.yml
WORKERS = 3
SHARDS = 2  # Discord's: shard 0 on the first worker, shard 1 on the second
USERS = 5  # per kind: Telegram, Slack, Discord private messages, Discord guild
PER_USER = 4
TWICE = 1  # each Telegram and Slack user's message number TWICE is delivered twice at once
SIGTERM_AFTER = 25  # replies out (of all platforms) before the third worker gets SIGTERM
WITHIN = 30.0  # seconds for a worker to be ready, a reply to come, a worker to exit
REDELIVERY_PAUSE = 0.2  # before a platform delivers again what was not answered 200
DELIVERIES = 20  # at most, per event
_ECHOED = re.compile(r'^You said: "(.*)" \(\d+ earlier', re.DOTALL)


def haproxy_binary() -> str | None:
    """HAProxy (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        return "/usr/sbin/haproxy"
    return found


# -- the workers ---------------------------------------------------------------------------


@dataclass
class Worker:
    """One `bot run`, its ports, and its log (shown when it fails)."""

    number: int
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def http_port(self) -> int:
        return int(self.env["HTTP_PORT"])

    @property
    def telegram_port(self) -> int:
        return int(self.env["TELEGRAM_WEBHOOK_PORT"])

    @property
    def slack_port(self) -> int:
        return int(self.env["SLACK_PORT"])

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, cwd=ROOT,
            )  # fmt: skip

    async def ready(self, session: aiohttp.ClientSession) -> None:
        """Once its /readyz says 200: the stores answer, every channel is connected."""
        url = f"http://127.0.0.1:{self.http_port}/readyz"

        async def answers() -> bool:
            assert self.process is not None and self.process.returncode is None, self.tail()
            try:
                async with session.get(url) as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await until_async(answers, WITHIN, f"worker {self.number} ready")

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"http://127.0.0.1:{self.http_port}/metrics") as response:
            return await response.text()

    async def stop(self) -> int:
        """SIGTERM, then its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), WITHIN)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def messages_in(exposition: str, channel: str) -> float:
    found = re.search(rf'^bot_messages_in_total{{channel="{channel}"}} (\S+)$', exposition, re.M)
    return float(found.group(1)) if found else 0.0


# -- HAProxy ---------------------------------------------------------------------------------


@dataclass
class Balancer:
    public_url: str  # https://127.0.0.1:PORT, TLS ended by HAProxy
    stats_url: str
    tls: ssl.SSLContext  # trusts HAProxy's certificate, as the platforms trust a real one

    async def servers(
        self, session: aiohttp.ClientSession
    ) -> dict[tuple[str, str], dict[str, str]]:
        """HAProxy's own statistics per (backend, server): status, 2xx answers, ..."""
        async with session.get(f"{self.stats_url};csv") as response:
            text = await response.text()
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        return {
            (row["pxname"], row["svname"]): row
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }


def haproxy_config(template: str, workers: list[Worker], public: int, stats: int, pem: Path) -> str:
    """The repository's haproxy.cfg with this machine's addresses and ports; every line
    substituted must be there exactly once, so that the file and the test agree."""
    lines = {
        "bind :443 ssl crt /usr/local/etc/haproxy/certs/bot.pem": (
            f"bind 127.0.0.1:{public} ssl crt {pem}"
        ),
        "bind :8404": f"bind 127.0.0.1:{stats}",
    }
    for w in workers:
        n, check = w.number, f"port {w.http_port}"
        lines[f"server bot-{n} bot-{n}:8443"] = (
            f"server bot-{n} 127.0.0.1:{w.telegram_port} {check}"
        )
        lines[f"server bot-{n} bot-{n}:3000"] = f"server bot-{n} 127.0.0.1:{w.slack_port} {check}"
    text = template
    for old, new in lines.items():
        assert len(re.findall(rf"^\s*{re.escape(old)}$", text, re.M)) == 1, old
        text = re.sub(rf"^(\s*){re.escape(old)}$", rf"\g<1>{new}", text, flags=re.M)
    assert len(re.findall(r"^\s*server ", text, re.M)) == 2 * len(workers)  # no other worker
    return text


@asynccontextmanager
async def haproxy(workers: list[Worker], tmp_path: Path) -> AsyncIterator[Balancer]:
    binary = required_binary(haproxy_binary(), "haproxy")
    authority = trustme.CA()
    pem = tmp_path / "bot.pem"  # the chain, then its key: what `ssl crt` reads
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    public, stats = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(HAPROXY_CFG.read_text(), workers, public, stats, pem))
    log = tmp_path / "haproxy.log"
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    tls = ssl.create_default_context()
    authority.configure_trust(tls)
    try:
        yield Balancer(f"https://127.0.0.1:{public}", f"http://127.0.0.1:{stats}/stats", tls)
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), WITHIN)


# -- the platforms, delivering as they do ----------------------------------------------------


@dataclass
class Deliveries:
    """What the platforms saw of HAProxy: answers other than 200 (delivered again)."""

    posted: int = 0
    refused: Counter[int] = field(default_factory=Counter)


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Callable[[int], dict[str, str]],
    seen: Deliveries,
    tls: ssl.SSLContext,
) -> None:
    """Post `body` until it is answered 200, as Telegram and Slack deliver an event;
    `headers(n)` for the n-th delivery (0: the first)."""
    for n in range(DELIVERIES):
        seen.posted += 1
        async with session.post(url, data=body, headers=headers(n), ssl=tls) as response:
            await response.read()
            if response.status == 200:
                return
            seen.refused[response.status] += 1
        await asyncio.sleep(REDELIVERY_PAUSE)
    raise AssertionError(f"{url}: not taken in {DELIVERIES} deliveries")


def telegram_headers(secret: str) -> Callable[[int], dict[str, str]]:
    return lambda n: {"Content-Type": "application/json", SECRET_HEADER: secret}


def slack_headers(body: bytes, retried: bool = False) -> Callable[[int], dict[str, str]]:
    """Slack signs each delivery with its time, and numbers its retries."""

    def headers(n: int) -> dict[str, str]:
        stamp = int(time.time())
        found = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": str(stamp),
            "X-Slack-Signature": slack_api.sign(body, stamp),
        }
        if n or retried:
            found |= {"X-Slack-Retry-Num": str(n + retried), "X-Slack-Retry-Reason": "http_timeout"}
        return found

    return headers


def echoed(replies: list[str]) -> Counter[str]:
    """The texts the echo responder's replies answer, each as often as it was answered."""
    return Counter(m.group(1) for text in replies if (m := _ECHOED.match(text)))


async def until_async(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    try:
        async with asyncio.timeout(within):
            while not await condition():  # noqa: ASYNC110 - asks other processes
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {within} s") from None


def guild_on_shard(shard: int) -> str:
    """A guild id Discord routes to `shard` of SHARDS: (id >> 22) % SHARDS == shard."""
    base = int(discord_api.snowflake())
    stamp = (base >> 22) + (shard - (base >> 22)) % SHARDS
    return str((stamp << 22) | (base & 0x3FFFFF))


# -- the test -------------------------------------------------------------------------------


@dataclass
class Run:
    """The platforms, the balancer, and what the simulated users sent, in order."""

    telegram: FakeBotApi
    slack: FakeSlack
    discord: FakeDiscord
    session: aiohttp.ClientSession
    balancer: Balancer
    hook_secret: str
    sent: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (platform, user)
    seen: Deliveries = field(default_factory=Deliveries)

    def replies(self) -> Counter[str]:
        return (
            echoed([m["text"] for m in self.telegram.sent])
            + echoed([p["text"] for p in self.slack.posts])
            + echoed([p["content"] for p in self.discord.posts()])
        )

    async def answered(self, text: str) -> None:
        await until(lambda: self.replies()[text] >= 1, WITHIN, f"a reply to {text!r}")

    def _sending(self, platform: str, user_id: str, text: str) -> None:
        self.sent.setdefault((platform, user_id), []).append(text)

    async def _posted(
        self, path: str, body: bytes, *copies: Callable[[int], dict[str, str]]
    ) -> None:
        url, tls = f"{self.balancer.public_url}{path}", self.balancer.tls
        await asyncio.gather(
            *(deliver(self.session, url, body, headers, self.seen, tls) for headers in copies)
        )

    async def telegram_user(self, i: int) -> None:
        person = telegram_api.user(10**9 + uuid.uuid4().int % 10**8, f"tg{i}")
        for n in range(PER_USER):
            text = f"telegram user {i} message {n}"
            self._sending("telegram", str(person["id"]), text)
            update = telegram_api.private_update(self.telegram, person, text)
            headers = telegram_headers(self.hook_secret)
            copies = [headers, headers] if n == TWICE else [headers]  # Telegram sends it again
            await self._posted(HOOK_PATH, json.dumps(update).encode(), *copies)
            await self.answered(text)

    async def slack_user(self, i: int) -> None:
        person = "USCALE" + uuid.uuid4().hex[:6].upper()
        for n in range(PER_USER):
            text = f"slack user {i} message {n}"
            self._sending("slack", person, text)
            event = {
                "type": "message", "channel_type": "im", "user": person, "text": text,
                "channel": f"D{person}", "ts": f"{time.time():.6f}",
                "client_msg_id": str(uuid.uuid4()),
            }  # fmt: skip
            body = json.dumps(slack_api.event_envelope(event)).encode()
            copies = [slack_headers(body)]
            if n == TWICE:  # Slack's retry, sent before the first was answered
                copies.append(slack_headers(body, retried=True))
            await self._posted("/slack/events", body, *copies)
            await self.answered(text)

    async def discord_user(self, i: int, in_guild: bool) -> None:
        """Private messages come on shard 0, the guild's on its shard (1)."""
        discord, author = self.discord, discord_api.user(f"dc{i}")
        where = None if in_guild else discord_api.snowflake()  # the DM channel
        mention = f"<@{discord.bot['id']}> " if in_guild else ""
        for n in range(PER_USER):
            text = f"discord {'guild' if in_guild else 'dm'} user {i} message {n}"
            self._sending("discord", author["id"], text)
            message = discord.message(
                author, mention + text, channel_id=where, guild=in_guild,
                mentions=(discord.bot,) if in_guild else (),
            )  # fmt: skip
            await discord.push_message(message, shard=1 if in_guild else 0)
            await self.answered(text)

    async def load(self) -> None:
        await asyncio.gather(
            *(self.telegram_user(i) for i in range(USERS)),
            *(self.slack_user(i) for i in range(USERS)),
            *(self.discord_user(i, in_guild=False) for i in range(USERS)),
            *(self.discord_user(i, in_guild=True) for i in range(USERS)),
        )

    async def in_pool(self, server: str) -> bool | None:
        """Whether HAProxy sends webhooks to `server` (both backends agree), None if
        they do not agree or HAProxy does not answer yet."""
        try:
            found = await self.balancer.servers(self.session)
        except aiohttp.ClientConnectionError:
            return None
        states = {found[(backend, server)]["status"] == "UP" for backend in BACKENDS}
        return states.pop() if len(states) == 1 else None


BACKENDS = ("telegram", "slack")


def make_workers(
    settings: Settings, platforms: tuple[FakeBotApi, FakeSlack, FakeDiscord], tmp_path: Path
) -> tuple[list[Worker], str]:
    """The workers as deploy/scaled/docker-compose.yml sets them up, each on its own free
    ports; and the webhook secret they share."""
    telegram, slack, discord = platforms
    hook_secret = f"scaled_{uuid.uuid4().hex}"
    common = worker_env(settings) | {
        "HTTP_HOST": "127.0.0.1",
        "LLM_BASE_URL": "",  # the echo responder: each reply quotes what it answers
        "ECHO_STREAM_DELAY_SECONDS": "0",
        "TELEGRAM_BOT_TOKEN": telegram_api.TOKEN,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        "TELEGRAM_WEBHOOK_URL": f"https://bot.example.com{HOOK_PATH}",
        "TELEGRAM_WEBHOOK_SECRET": hook_secret,
        "TELEGRAM_WEBHOOK_LISTEN": "127.0.0.1",
        "SLACK_BOT_TOKEN": slack_api.BOT_TOKEN,
        "SLACK_SIGNING_SECRET": slack_api.SIGNING_SECRET,
        "SLACK_API_BASE_URL": slack.api_url,
        "SLACK_LISTEN": "127.0.0.1",
        "DISCORD_API_BASE_URL": discord.api_url,
        "DISCORD_GATEWAY_URL": discord.ws_url(),  # with the shard count given, asked for none
        "DISCORD_SHARD_COUNT": str(SHARDS),
    }
    workers = []
    for number in range(1, WORKERS + 1):
        env = common | {
            "HTTP_PORT": str(free_port()),
            "TELEGRAM_WEBHOOK_PORT": str(free_port()),
            "SLACK_PORT": str(free_port()),
        }
        if number <= SHARDS:  # as in the compose file: bot-3 serves no Discord shard
            env |= {"DISCORD_BOT_TOKEN": discord_api.TOKEN, "DISCORD_SHARD_IDS": str(number - 1)}
        workers.append(Worker(number, env, tmp_path / f"bot-{number}.log"))
    return workers, hook_secret


async def test_workers_behind_haproxy_answer_each_event_once_in_order(
    settings: Settings,
    engine: AsyncEngine,
    telegram: FakeBotApi,
    slack: FakeSlack,
    discord_server: FakeDiscord,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    required_binary(haproxy_binary(), "haproxy")
    discord_server.guild_id = guild_on_shard(1)  # before the workers connect (GUILD_CREATE)
    workers, hook_secret = make_workers(settings, (telegram, slack, discord_server), tmp_path)
    third = workers[-1]
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(w.start() for w in workers))
            await asyncio.gather(*(w.ready(session) for w in workers))
            async with haproxy(workers, tmp_path) as balancer:
                run = Run(telegram, slack, discord_server, session, balancer, hook_secret)

                async def all_up() -> bool:
                    return all([await run.in_pool(f"bot-{w.number}") for w in workers])

                await until_async(all_up, WITHIN, "every worker UP in HAProxy")
                ready_at = time.monotonic()

                async def sigterm_third() -> tuple[int, float]:
                    await until(lambda: sum(run.replies().values()) >= SIGTERM_AFTER, WITHIN)
                    signalled = time.monotonic()
                    return await third.stop(), time.monotonic() - signalled

                stopping = asyncio.create_task(sigterm_third())
                await run.load()
                load_seconds = time.monotonic() - ready_at
                third_exit, third_shutdown = await stopping

                async def third_out() -> bool:  # HAProxy's health check took it out
                    return await run.in_pool("bot-3") is False

                await until_async(third_out, WITHIN, "bot-3 out of HAProxy's pools")
                stats = await balancer.servers(session)
                shard_metrics = [await w.metrics(session) for w in workers[:SHARDS]]
            exits = [await w.stop() for w in workers[:-1]]
    finally:
        for w in workers:
            await w.kill()
    seconds = time.monotonic() - started

    for w, code in zip(workers, [*exits, third_exit], strict=True):
        assert code == 0, f"bot-{w.number} exited {code}:\n{w.tail()}"
    # Every event answered exactly once, counted at the platform servers once every
    # worker had finished: twice-delivered ones and those bot-3 refused included.
    answers = run.replies()
    every_text = [text for texts in run.sent.values() for text in texts]
    assert len(every_text) == 4 * USERS * PER_USER
    assert {text: answers[text] for text in every_text} == dict.fromkeys(every_text, 1)
    assert sum(answers.values()) == len(every_text)  # and nothing else was sent
    # Stored once each, each user's messages and replies in the order sent.
    for (platform, user_id), texts in run.sent.items():
        rows = await conversation_of(engine, user_id)
        assert [t for role, t in rows if role == "user"] == texts, (platform, user_id)
        assert_in_order(rows)

    # Spread: HAProxy gave each kind of webhook to more than one worker, and what reached
    # bot-3 while it shut down to another one; each Discord shard's events were answered
    # by the worker holding it.
    answered_by = {
        backend: [int(stats[(backend, f"bot-{w.number}")]["hrsp_2xx"] or 0) for w in workers]
        for backend in BACKENDS
    }
    redispatched = sum(int(stats[(b, "bot-3")]["wredis"] or 0) for b in BACKENDS)
    discord_per_worker = [int(messages_in(text, "discord")) for text in shard_metrics]
    line = (
        f"load balanced: {WORKERS} bot run workers behind HAProxy, "
        f"{len(every_text)} events ({2 * USERS} delivered twice), each answered once; "
        f"telegram 2xx per worker {answered_by['telegram']}, slack {answered_by['slack']}, "
        f"discord per shard {discord_per_worker}; non-200 answers to the platforms "
        f"{dict(run.seen.refused) or 0} of {run.seen.posted} posts; bot-3 SIGTERM after "
        f"{SIGTERM_AFTER} replies, exited 0 in {third_shutdown:.2f}s, {redispatched} requests "
        f"redispatched from it; load {load_seconds:.1f}s, whole test {seconds:.1f}s"
    )
    request.config.stash.setdefault(FIGURES, []).append(line)
    print(f"\n{line}")
    for backend, counts in answered_by.items():
        assert sum(1 for count in counts if count > 0) >= 2, (backend, counts)
    assert discord_per_worker == [USERS * PER_USER] * SHARDS
    # HAProxy sent what the stopping worker refused (503) to another one at once: the
    # platforms never had to deliver again.
    assert not run.seen.refused, run.seen.refused
    assert redispatched >= 1  # the SIGTERM came while webhooks were still arriving


def test_the_compose_file_sets_up_what_this_test_runs() -> None:
    """deploy/scaled/docker-compose.yml and haproxy.cfg agree with each other and with the
    workers above (read as text: the suite has no YAML parser, and needs none for this)."""
    compose = (HAPROXY_CFG.parent / "docker-compose.yml").read_text()
    config = HAPROXY_CFG.read_text()
    services = re.findall(r"^  (bot-\d+):$", compose, re.M)
    assert services == [f"bot-{n}" for n in range(1, WORKERS + 1)]
    for setting in (
        f"TELEGRAM_WEBHOOK_URL: https://${{PUBLIC_HOST:-bot.example.com}}{HOOK_PATH}",
        'TELEGRAM_WEBHOOK_PORT: "8443"',
        'SLACK_PORT: "3000"',
        'HTTP_PORT: "8080"',
        'SLACK_APP_TOKEN: ""',
        f'DISCORD_SHARD_COUNT: "{SHARDS}"',
        "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro",
        "./certs:/usr/local/etc/haproxy/certs:ro",
    ):
        assert setting in compose, setting
    blocks = re.split(r"^  (?=bot-\d+:$)", compose, flags=re.M)[1:]
    for number, block in enumerate(blocks, 1):
        block = block.split("\n\n")[0]
        if number <= SHARDS:
            assert f'DISCORD_SHARD_IDS: "{number - 1}"' in block, block
        else:
            assert 'DISCORD_BOT_TOKEN: ""' in block, block
    assert "check port 8080" in config
    assert f"path_beg {HOOK_PATH.rsplit('/', 1)[0]}/" in config
    for number in range(1, WORKERS + 1):
        assert f"server bot-{number} bot-{number}:8443" in config
        assert f"server bot-{number} bot-{number}:3000" in config
