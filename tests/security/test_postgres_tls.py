"""TLS to Postgres through DATABASE_URL: libpq's sslmode (and sslrootcert for
verify-full) reach asyncpg, the connection is really encrypted, and migrations (bot
migrate, and alembic itself) run over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.config import Settings
from bot.store.engine import create_engine
from bot.store.migrate import head_revision
from tests.security.conftest import (
    admin_execute,
    admin_fetch,
    bot_env,
    run_bot,
    unique,
)
from tests.security.servers import TLS_ONLY, Certificates, OwnPostgres
from tests.support import ROOT

pytestmark = pytest.mark.timeout(180)

PASSWORD = "tlsPg+Pw/2c4e"
ALEMBIC = ROOT / ".venv" / "bin" / "alembic"


@dataclass(frozen=True)
class Account:
    role: str
    database: str

    def url(self, server: OwnPostgres, query: str = "", host: str = "127.0.0.1") -> str:
        return server.url(self.role, PASSWORD, self.database, query).replace(
            "@127.0.0.1:", f"@{host}:", 1
        )


async def account(server: OwnPostgres, *groups: str) -> Account:
    found = Account(unique("tls_role"), unique("tls_db"))
    member = f" IN ROLE {', '.join(groups)}" if groups else ""
    await admin_execute(
        server.admin_url,
        f"CREATE ROLE {found.role} LOGIN PASSWORD '{PASSWORD}'{member}",
        f'CREATE DATABASE "{found.database}" OWNER {found.role}',
    )
    return found


async def drop(server: OwnPostgres, found: Account) -> None:
    await admin_execute(
        server.admin_url,
        f'DROP DATABASE IF EXISTS "{found.database}" WITH (FORCE)',
        f"DROP ROLE IF EXISTS {found.role}",
    )


@pytest.fixture
async def anyone(own_pg: OwnPostgres) -> AsyncIterator[Account]:
    """A role that may connect with or without TLS."""
    found = await account(own_pg)
    yield found
    await drop(own_pg, found)


@pytest.fixture
async def tls_only(own_pg: OwnPostgres) -> AsyncIterator[Account]:
    """A role the server lets in over TLS only: its every success proves encryption."""
    found = await account(own_pg, TLS_ONLY)
    yield found
    await drop(own_pg, found)


async def encrypted(url: str) -> bool:
    """Whether the bot's engine, built from this DATABASE_URL, connects over TLS."""
    settings = Settings(_env_file=None, database_url=url)
    assert settings.database_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value(), pool_size=1)
    try:
        async with engine.connect() as connection:
            query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            return bool(await connection.scalar(text(query)))
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("mode", "tls"),
    [("disable", False), ("require", True), ("verify-ca", True), ("verify-full", True)],
)
async def test_sslmode_decides_whether_the_connection_is_encrypted(
    own_pg: OwnPostgres, anyone: Account, certificates: Certificates, mode: str, tls: bool
) -> None:
    query = f"sslmode={mode}" + (f"&sslrootcert={certificates.ca}" if "verify" in mode else "")
    assert await encrypted(anyone.url(own_pg, query)) is tls


def env_for(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    return bot_env(
        tmp_path,
        DATABASE_URL=url,
        REDIS_URL="redis://127.0.0.1:9/0",
        REDIS_KEY_PREFIX=f"{unique('pgtls')}:",
        LOG_LEVEL="INFO",
        DB_CONNECT_TIMEOUT_SECONDS="2",
        DB_RETRY_DEADLINE_SECONDS="3",
        **extra,
    )


async def test_bot_migrates_and_chats_over_sslmode_require(
    own_pg: OwnPostgres, tls_only: Account, tmp_path: Path
) -> None:
    env = env_for(tmp_path, tls_only.url(own_pg, "sslmode=require"))

    migrated = await run_bot("migrate", cwd=tmp_path, env=env)
    chatted = await run_bot("chat", "--user", "tls-user", cwd=tmp_path, env=env, stdin="hi\n")

    assert migrated.code == 0, migrated.err
    assert f"database at revision {head_revision()}" in migrated.out
    assert "?ssl=require" in migrated.out  # the URL shown, masked, in the form in use
    assert chatted.code == 0 and '"hi" (0 earlier' in chatted.out, chatted.err
    assert PASSWORD not in migrated.text + chatted.text


async def test_without_tls_the_tls_only_role_is_refused(
    own_pg: OwnPostgres, tls_only: Account, tmp_path: Path
) -> None:
    """The other side of the test above: there, TLS was what let the role in."""
    env = env_for(tmp_path, tls_only.url(own_pg, "sslmode=disable"))
    refused = await run_bot("migrate", cwd=tmp_path, env=env)
    assert refused.code == 1
    last = refused.err.strip().splitlines()[-1]
    assert last.startswith("bot: cannot reach Postgres at ") and "no encryption" in last, last
    assert "sslmode=require" in last
    assert "Traceback" not in refused.err


async def test_alembic_migrates_over_tls(
    own_pg: OwnPostgres, tls_only: Account, tmp_path: Path
) -> None:
    """`alembic` itself builds its engine from DATABASE_URL through the bot's settings."""
    env = env_for(tmp_path, tls_only.url(own_pg, "sslmode=require"))
    for command in (("upgrade", "head"), ("downgrade", "base"), ("upgrade", "head")):
        ran = await run_alembic(env, *command)
        assert ran[0] == 0, ran[1]
    rows = await admin_fetch(
        own_pg.admin_url.rsplit("/", 1)[0] + f"/{tls_only.database}",
        "SELECT version_num FROM alembic_version",
    )
    assert [row[0] for row in rows] == [head_revision()]


async def run_alembic(env: dict[str, str], *args: str) -> tuple[int, str]:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        str(ALEMBIC),
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.parametrize("ca_from", ["url", "PGSSLROOTCERT"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_verify_full_checks_the_servers_certificate(
    own_pg: OwnPostgres,
    tls_only: Account,
    certificates: Certificates,
    tmp_path: Path,
    ca_from: str,
    host: str,
) -> None:
    def env(ca: Path) -> dict[str, str]:
        if ca_from == "url":
            return env_for(
                tmp_path, tls_only.url(own_pg, f"sslmode=verify-full&sslrootcert={ca}", host)
            )
        return env_for(
            tmp_path, tls_only.url(own_pg, "sslmode=verify-full", host), PGSSLROOTCERT=str(ca)
        )

    trusted = await run_bot("migrate", cwd=tmp_path, env=env(certificates.ca))
    chatted = await run_bot("chat", cwd=tmp_path, env=env(certificates.ca), stdin="hello\n")
    stranger = await run_bot("migrate", cwd=tmp_path, env=env(certificates.other_ca))

    assert trusted.code == 0, trusted.err
    assert chatted.code == 0 and '"hello"' in chatted.out, chatted.err
    assert stranger.code == 1 and "Traceback" not in stranger.err
    last = stranger.err.strip().splitlines()[-1]
    assert last.startswith("bot: cannot reach Postgres at ") and "certificate" in last, last
