"""What the security tests share: certificates, a Postgres of their own with password
auth and TLS, `bot` run as a real subprocess, and the scan for secrets in its output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import asyncpg
import pytest

from bot.config import Settings
from bot.emulators.discord_api import TOKEN as DISCORD_TOKEN
from bot.emulators.llm_api import LLMServer
from bot.emulators.slack_api import APP_TOKEN as SLACK_APP_TOKEN
from bot.emulators.slack_api import BOT_TOKEN as SLACK_BOT_TOKEN
from bot.emulators.slack_api import SIGNING_SECRET as SLACK_SIGNING_SECRET
from bot.emulators.telegram_api import TOKEN as TELEGRAM_TOKEN
from tests.security.servers import Certificates, OwnPostgres, OwnRedis, make_certificates
from tests.support import ROOT, migrate_to_head

PYTHON = ROOT / ".venv" / "bin" / "python"
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens
BOT_TIMEOUT = 90.0


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def own_pg(certificates: Certificates) -> Iterator[OwnPostgres]:
    """One Postgres for the security tests: SCRAM passwords, TLS on."""
    server = OwnPostgres(certificates)
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def admin_execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def admin_fetch(url: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return list(await connection.fetch(query))
    finally:
        await connection.close()


def database_of(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- `bot` as a subprocess, and what it showed -------------------------------------------


def bot_env(cwd: Path, **settings: str) -> dict[str, str]:
    """The environment less every proxy and every bot setting, plus the given settings;
    a `bot run` serves its health endpoints on a free port (never the fixed 8080)."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.lower().endswith("_proxy") and name.lower() not in Settings.model_fields
    }
    return {
        **base, "DATA_DIR": str(cwd / "data"), "NO_PROXY": "127.0.0.1,localhost",
        "HTTP_HOST": "127.0.0.1", "HTTP_PORT": "0", **settings,
    }  # fmt: skip


@dataclass
class Ran:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Captured:
    """Everything the bot showed anyone: output, errors, HTTP bodies, replies sent."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str) -> None:
        self.items.append((where, text))

    def add_run(self, ran: Ran) -> Ran:
        self.add(f"bot {' '.join(ran.args)} stdout", ran.out)
        self.add(f"bot {' '.join(ran.args)} stderr", ran.err)
        return ran

    def leaks(self, secrets: Iterable[str]) -> list[str]:
        forms = secret_forms(secrets)
        return [
            f"{where}: {form!r} in {_around(text, form)!r}"
            for where, text in self.items
            for form in forms
            if form in text
        ]


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as written, URL-encoded both ways, and escaped inside a JSON string."""
    forms: set[str] = set()
    for secret in secrets:
        forms |= {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    return sorted(forms)


def _around(text: str, form: str) -> str:
    at = text.index(form)
    return text[max(0, at - 80) : at + len(form) + 80]


async def run_bot(*args: str, cwd: Path, env: dict[str, str], stdin: str | None = None) -> Ran:
    process = await asyncio.create_subprocess_exec(
        str(PYTHON if PYTHON.exists() else sys.executable),
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else None), BOT_TIMEOUT
        )
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"bot {args} did not finish: {err.decode()[-2000:]}") from None
    assert process.returncode is not None
    return Ran(args, process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@pytest.fixture
async def scratch_database(own_pg: OwnPostgres) -> AsyncIterator[str]:
    """The name of a new database on the security tests' Postgres, dropped after."""
    name = unique("sec")
    await admin_execute(own_pg.admin_url, f'CREATE DATABASE "{name}"')
    yield name
    await admin_execute(own_pg.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the known secrets of the scan, and the servers and settings that carry them ---------

PG_PASSWORD = "pgPw+Scan/7f3a=q"
REDIS_PASSWORD = "rdPw+Scan/9c1e=w"
LLM_API_KEY = "sk-scan-4b1d9e7c2a6f0e3d8a"
TELEGRAM_WEBHOOK_SECRET = "tgHook_Scan-5e8a2c9d1f"
PLATFORM_SECRETS = {
    "DISCORD_BOT_TOKEN": DISCORD_TOKEN,
    "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
    "SLACK_BOT_TOKEN": SLACK_BOT_TOKEN,
    "SLACK_APP_TOKEN": SLACK_APP_TOKEN,
    "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
    "TELEGRAM_WEBHOOK_SECRET": TELEGRAM_WEBHOOK_SECRET,
}
SECRETS = [
    PG_PASSWORD,
    REDIS_PASSWORD,
    LLM_API_KEY,
    *PLATFORM_SECRETS.values(),
    TELEGRAM_TOKEN.partition(":")[2],  # the token's secret half, should it show alone
]


@dataclass(frozen=True)
class ScanStores:
    database_url: str
    redis_url: str
    redis: OwnRedis


@pytest.fixture(scope="session")
async def scan_stores(
    own_pg: OwnPostgres, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ScanStores]:
    """A role with a password and its own migrated database; a Redis with a password."""
    role, database = unique("scan_role"), unique("scan_db")
    await admin_execute(
        own_pg.admin_url,
        f"CREATE ROLE {role} LOGIN PASSWORD '{PG_PASSWORD}'",
        f'CREATE DATABASE "{database}" OWNER {role}',
    )
    url = own_pg.url(role, PG_PASSWORD, database)
    await migrate_to_head(url)
    server = OwnRedis(tmp_path_factory.mktemp("scan-redis"), REDIS_PASSWORD)
    server.start()
    try:
        yield ScanStores(url, server.url(), server)
    finally:
        server.stop()
        await admin_execute(
            own_pg.admin_url,
            f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
            f"DROP ROLE IF EXISTS {role}",
        )


@pytest.fixture
def scan_env(scan_stores: ScanStores, llm: LLMServer, tmp_path: Path) -> dict[str, str]:
    """Every secret set, the most verbose log level, and a key prefix of the test's own."""
    return bot_env(
        tmp_path,
        DATABASE_URL=scan_stores.database_url,
        REDIS_URL=scan_stores.redis_url,
        REDIS_KEY_PREFIX=f"{unique('scan')}:",
        LLM_BASE_URL=llm.url,
        LLM_API_KEY=LLM_API_KEY,
        LLM_RETRY_DEADLINE_SECONDS="2",
        LOG_LEVEL="DEBUG",
        DB_CONNECT_TIMEOUT_SECONDS="1",
        DB_RETRY_DEADLINE_SECONDS="2",
        # Nothing answers here: no platform call may leave this machine.
        DISCORD_API_BASE_URL=f"{NOWHERE}/api",
        TELEGRAM_API_BASE_URL=f"{NOWHERE}/bot",
        SLACK_API_BASE_URL=f"{NOWHERE}/api/",
        **PLATFORM_SECRETS,
    )
