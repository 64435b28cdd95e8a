"""Least privilege: the SQL of docs/deployment.md, run as written, gives a migration role
that owns the schema and a runtime role that can only read and write rows; the bot
migrates as the one and serves as the other, without migrating at start."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from bot.store.migrate import head_revision
from tests.conftest import delete_prefix
from tests.security.conftest import admin_execute, bot_env, run_bot, unique
from tests.security.servers import OwnPostgres
from tests.support import ROOT

pytestmark = pytest.mark.timeout(180)

DOC = ROOT / "docs" / "deployment.md"
# The names and passwords the document uses, and what this test uses instead.
DOC_NAMES = ("bot_migrator", "bot_runtime", "chatbot")
DOC_PASSWORDS = ("change-me-migrator", "change-me-runtime")
FORBIDDEN = [
    "DROP TABLE messages",
    "ALTER TABLE messages ADD COLUMN sneaky int",
    "CREATE TABLE sneaky (id int)",
    "CREATE INDEX sneaky ON messages (content)",
    "TRUNCATE messages",
    "CREATE SCHEMA sneaky",
    "CREATE TEMP TABLE sneaky (id int)",
    "UPDATE alembic_version SET version_num = 'x'",
    "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'",
]


@dataclass(frozen=True)
class Roles:
    migrator: str
    runtime: str
    database: str
    passwords: tuple[str, str]

    def url(self, server: OwnPostgres, role: str, database: str | None = None) -> str:
        password = self.passwords[0] if role == self.migrator else self.passwords[1]
        return server.url(role, password, database or self.database)


def doc_sql(block: str, roles: Roles) -> list[str]:
    """The statements of the document's ```sql block marked `block`, with this test's
    names in place of the document's."""
    found = re.search(rf"<!-- {block} -->\s*```sql\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert found, f"docs/deployment.md has no sql block marked {block}"
    sql = found.group(1)
    for ours, theirs in zip(
        (roles.migrator, roles.runtime, roles.database, *roles.passwords),
        (*DOC_NAMES, *DOC_PASSWORDS),
        strict=True,
    ):
        sql = re.sub(rf"\b{re.escape(theirs)}\b", ours, sql)
    statements = [part.strip() for part in re.sub(r"--[^\n]*", "", sql).split(";")]
    return [statement for statement in statements if statement]


@pytest.fixture
async def roles(own_pg: OwnPostgres) -> AsyncIterator[Roles]:
    found = Roles(
        unique("migrator"),
        unique("runtime"),
        unique("chatbot"),
        ("mig+Pw/" + unique("p"), "run+Pw/" + unique("p")),
    )
    await admin_execute(own_pg.admin_url, *doc_sql("roles-cluster", found))
    in_database = own_pg.admin_url.rsplit("/", 1)[0] + f"/{found.database}"
    await admin_execute(in_database, *doc_sql("roles-database", found))
    yield found
    await admin_execute(
        own_pg.admin_url,
        f'DROP DATABASE IF EXISTS "{found.database}" WITH (FORCE)',
        f"DROP ROLE IF EXISTS {found.migrator}",
        f"DROP ROLE IF EXISTS {found.runtime}",
    )


def env_for(tmp_path: Path, url: str, prefix: str, **extra: str) -> dict[str, str]:
    return bot_env(
        tmp_path,
        DATABASE_URL=url,
        REDIS_URL="redis://127.0.0.1:6379/0",
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="INFO",
        **extra,
    )


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the suite's Redis, deleted at the end."""
    name = f"{unique('roles')}:"
    yield name
    cleaner = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        await delete_prefix(cleaner, name)
    finally:
        await cleaner.aclose()


async def test_the_bot_migrates_as_one_role_and_serves_as_the_other(
    own_pg: OwnPostgres, roles: Roles, tmp_path: Path, prefix: str
) -> None:
    user = unique("rita")
    migrator = env_for(tmp_path, roles.url(own_pg, roles.migrator), prefix)
    runtime = env_for(tmp_path, roles.url(own_pg, roles.runtime), prefix)

    migrated = await run_bot("migrate", cwd=tmp_path, env=migrator)
    assert migrated.code == 0, migrated.err
    await admin_execute(
        own_pg.admin_url.rsplit("/", 1)[0] + f"/{roles.database}",
        *doc_sql("roles-after-migrate", roles),
    )

    lines = "hello\n/model\n/model gpt-runtime\n/history\n/reset\nafter reset\n"
    served = await run_bot(
        "run",
        "--no-migrate",
        "--channels",
        "console",
        "--user",
        user,
        cwd=tmp_path,
        env=runtime,
        stdin=lines,
    )
    chatted = await run_bot(
        "chat",
        "--user",
        user,
        cwd=tmp_path,
        env=runtime | {"MIGRATE_ON_START": "false"},
        stdin="more\n",
    )

    assert served.code == 0, served.err
    assert "permission denied" not in served.err + chatted.err
    assert '"hello" (0 earlier' in served.out
    assert "gpt-runtime" in served.out
    assert '"after reset" (0 earlier' in served.out  # /reset started a new conversation
    assert chatted.code == 0 and '"more" (2 earlier' in chatted.out, chatted.err

    health = await run_bot("ops", "health", "--json", cwd=tmp_path, env=runtime)
    report = json.loads(health.out)
    assert report["ok"] is True and report["migrations"]["ok"] is True, report
    shown = await run_bot(
        "ops", "user", "show", "console", user, "--json", cwd=tmp_path, env=runtime
    )
    conversations = json.loads(shown.out)["conversations"]
    assert len(conversations) == 2
    reads = [
        ("stats",),
        ("conversation", "show", str(conversations[0]["id"])),
        ("conversation", "search", "hello"),
        ("flags", "list"),
        ("config", "show"),
    ]
    for args in reads:
        ran = await run_bot("ops", *args, cwd=tmp_path, env=runtime)
        assert ran.code == 0, (args, ran.text)


async def test_the_runtime_role_can_change_no_schema(
    own_pg: OwnPostgres, roles: Roles, tmp_path: Path, prefix: str
) -> None:
    migrator = env_for(tmp_path, roles.url(own_pg, roles.migrator), prefix)
    assert (await run_bot("migrate", cwd=tmp_path, env=migrator)).code == 0
    await admin_execute(
        own_pg.admin_url.rsplit("/", 1)[0] + f"/{roles.database}",
        *doc_sql("roles-after-migrate", roles),
    )
    connection = await asyncpg.connect(roles.url(own_pg, roles.runtime), timeout=10)
    try:
        for statement in FORBIDDEN:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
        # What it may do: rows, and reading the schema revision.
        assert await connection.fetchval("SELECT version_num FROM alembic_version") == (
            head_revision()
        )
        await connection.execute("DELETE FROM messages WHERE false")
    finally:
        await connection.close()


async def test_the_runtime_role_cannot_migrate_and_says_so(
    own_pg: OwnPostgres, roles: Roles, tmp_path: Path, prefix: str
) -> None:
    """On an empty database: `bot migrate` as the runtime role is refused, and `bot run
    --no-migrate` says the schema is behind and what to run."""
    runtime = env_for(tmp_path, roles.url(own_pg, roles.runtime), prefix)

    migrate = await run_bot("migrate", cwd=tmp_path, env=runtime)
    run = await run_bot(
        "run", "--no-migrate", "--channels", "console", cwd=tmp_path, env=runtime, stdin="hello\n"
    )

    assert migrate.code == 1 and "permission denied" in migrate.err
    assert run.code == 1 and "Traceback" not in run.err
    last = run.err.strip().splitlines()[-1]
    assert "schema" in last and "bot migrate" in last and str(head_revision()) in last, last
