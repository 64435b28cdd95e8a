"""The `bot` command line, run as a real subprocess: help, setting errors, `bot migrate`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from bot.config import Settings
from bot.store.migrate import head_revision
from tests.conftest import create_database, drop_database
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
PROXIES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@dataclass
class Result:
    code: int
    out: str
    err: str


async def bot(*args: str, cwd: Path = ROOT, **env: str) -> Result:
    """`python -m bot ARGS` (from the repository root), with only the given settings set."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in PROXIES and k.lower() not in Settings.model_fields
    }
    process = await asyncio.create_subprocess_exec(
        str(PYTHON if PYTHON.exists() else sys.executable),
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env={**base, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def fresh_database(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """A new, empty database of this test; its plain postgresql:// URL."""
    name = f"bot_cli_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_urls[0], name)
    yield url
    await drop_database(server_urls[0], name)


def is_empty(directory: Path) -> bool:
    return not any(directory.iterdir())


async def revision_of(url: str) -> str:
    connection = await asyncpg.connect(url)
    try:
        return str(await connection.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await connection.close()


async def test_help_explains_every_command() -> None:
    main, run, chat, migrate = await asyncio.gather(
        bot("--help"), bot("run", "--help"), bot("chat", "--help"), bot("migrate", "--help")
    )

    for result in (main, run, chat, migrate):
        assert result.code == 0, result.err
        assert result.err == ""
    assert "usage: bot" in main.out
    for command in ("run", "chat", "migrate"):
        assert command in main.out
    assert "DATABASE_URL" in main.out and ".env" in main.out
    assert "--channels" in run.out and "--user" in run.out
    assert "--user" in chat.out and "standard input" in chat.out
    assert "usage: bot migrate" in migrate.out and "advisory lock" in " ".join(migrate.out.split())


async def test_unknown_command_is_a_usage_error() -> None:
    result = await bot("fly")

    assert result.code == 2
    assert "invalid choice" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DB_POOL_SIZE": "abc"}, "DB_POOL_SIZE"),
        ({"DATABASE_URL": "mysql://u:hunter2pw@127.0.0.1/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:hunter2pw@127.0.0.1:port/db"}, "DATABASE_URL"),
        ({"REDIS_URL": "redis://:hunter2pw@127.0.0.1:6379/x"}, "REDIS_URL"),
    ],
)
async def test_invalid_setting_is_one_line_and_exit_2(
    tmp_path: Path, env: dict[str, str], names: str
) -> None:
    result = await bot("migrate", DATA_DIR=str(tmp_path), **env)

    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert names in lines[0] and "invalid setting" in lines[0]
    assert "Traceback" not in result.err and "hunter2pw" not in result.err
    assert is_empty(tmp_path), "no embedded server may start on a bad setting"


async def test_dotenv_file_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"DATABASE_URL=postgresql://u:hunter2pw@h/db\nX=\xff\n")

    result = await bot("migrate", cwd=tmp_path, DATA_DIR=str(tmp_path / "data"))

    assert result.code == 2 and result.out == ""
    assert (
        result.err == "bot: cannot read .env: line 2 is not valid UTF-8; save the file as UTF-8\n"
    )
    assert not (tmp_path / "data").exists(), "no embedded server may start on a bad setting"


async def test_unreachable_database_is_a_readable_error_without_the_password(
    tmp_path: Path, redis_url: str
) -> None:
    result = await bot(
        "migrate",
        DATABASE_URL="postgresql://postgres:hunter2pw@127.0.0.1:1/x",
        REDIS_URL=redis_url,
        DATA_DIR=str(tmp_path),
        LOG_LEVEL="DEBUG",
    )

    assert result.code != 0
    assert "hunter2pw" not in result.out + result.err
    assert "Traceback" not in result.err
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("bot: cannot reach Postgres at postgresql+asyncpg://postgres:***@")
    assert "DATABASE_URL" in last


async def test_migrate_a_fresh_database_twice(
    fresh_database: str, redis_url: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": fresh_database, "REDIS_URL": redis_url, "DATA_DIR": str(tmp_path)}
    head = head_revision()
    assert head is not None

    first = await bot("migrate", **env)
    assert first.code == 0, first.err
    assert f"database at revision {head}" in first.out
    assert "Traceback" not in first.err
    assert await revision_of(fresh_database) == head

    second = await bot("migrate", **env)
    assert second.code == 0, second.err
    assert f"database at revision {head}" in second.out
    assert await revision_of(fresh_database) == head
    assert is_empty(tmp_path), "configured servers need no embedded ones"


async def test_migrate_never_prints_the_database_password(
    fresh_database: str, redis_url: str, tmp_path: Path
) -> None:
    parts = urlsplit(fresh_database)
    if parts.password is not None:
        pytest.skip("the test server has a password of its own")
    # The local test server trusts its clients, so any password is accepted.
    with_password = parts._replace(
        netloc=f"{parts.username}:hunter2pw@{parts.netloc.rpartition('@')[2]}"
    ).geturl()

    result = await bot(
        "migrate",
        DATABASE_URL=with_password,
        REDIS_URL=redis_url,
        DATA_DIR=str(tmp_path),
        LOG_LEVEL="DEBUG",
    )

    assert result.code == 0, result.err
    assert "postgres:***@" in result.out
    assert "hunter2pw" not in result.out + result.err


async def test_migrate_a_database_of_an_unknown_revision_fails_readably(
    fresh_database: str, redis_url: str, tmp_path: Path
) -> None:
    """A database migrated by a newer release: a one-line error, not a traceback."""
    connection = await asyncpg.connect(fresh_database)
    try:
        await connection.execute(
            "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);"
            "INSERT INTO alembic_version VALUES ('9999_from_the_future')"
        )
    finally:
        await connection.close()

    result = await bot(
        "migrate", DATABASE_URL=fresh_database, REDIS_URL=redis_url, DATA_DIR=str(tmp_path)
    )

    assert result.code == 1
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("bot: migration failed") and "9999_from_the_future" in lines[0]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"TELEGRAM_BOT_TOKEN": "123:abc", "TELEGRAM_WEBHOOK_URL": "https://bot.invalid/tg"},
            "TELEGRAM_WEBHOOK_URL needs TELEGRAM_WEBHOOK_SECRET",
        ),
        (
            {"DISCORD_BOT_TOKEN": "abc", "DISCORD_SHARD_IDS": "0,1"},
            "DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT",
        ),
    ],
)
async def test_a_channel_setting_it_cannot_run_with_exits_2_before_any_store(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    # Nothing listens at DATABASE_URL: reaching for it would exit 1 "cannot reach Postgres".
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/x"

    result = await bot("run", DATABASE_URL=nowhere, DATA_DIR=str(tmp_path), **env)

    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bot: {says}"), result.err
    assert "Postgres" not in result.err and is_empty(tmp_path)


def stderr_lines_saying(result: Result, words: str) -> list[str]:
    return [line for line in result.err.splitlines() if words in line]


async def test_a_misspelt_setting_is_named_with_the_setting_it_is_close_to(
    tmp_path: Path, redis_url: str
) -> None:
    """Issue 17, item 4: DATABSE_URL was ignored without a word, and an embedded Postgres
    started instead of the one meant. Now a warning for each such variable, in the
    environment and in .env, naming the closest setting; others' variables stay quiet."""
    (tmp_path / ".env").write_text(
        "LLM_BASEURL=http://127.0.0.1:1/v1\nPOSTGRES_PASSWORD=for-docker-compose\n"
    )
    result = await bot(
        "migrate",
        cwd=tmp_path,
        DATABSE_URL="postgresql://postgres@127.0.0.1:5432/meant",
        TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/a-test-suite-s",
        REDIS_URL=redis_url,
        DATA_DIR=str(tmp_path / "data"),
    )

    assert result.code == 0, result.err
    warned = stderr_lines_saying(result, "is not a setting")
    assert [line.split(": ", 1)[1] for line in warned] == [
        "DATABSE_URL is not a setting and is ignored; did you mean DATABASE_URL?",
        "LLM_BASEURL in .env is not a setting and is ignored; did you mean LLM_BASE_URL?",
    ]
    assert all(" WARNING " in line for line in warned)
    # Still what the settings say: no DATABASE_URL, so the embedded one, after the warning.
    assert result.err.index("DATABSE_URL") < result.err.index("embedded Postgres listening")


async def test_log_format_json_keeps_the_embedded_servers_lines_json(tmp_path: Path) -> None:
    """Issue 17, item 10: LOG_FORMAT=json printed the embedded servers' lines as text;
    and run as root, the system user made for Postgres was never mentioned."""
    result = await bot("migrate", LOG_FORMAT="json", DATA_DIR=str(tmp_path))

    assert result.code == 0, result.err
    entries = [json.loads(line) for line in result.err.splitlines()]  # each line is JSON
    said = [entry["message"] for entry in entries if entry["logger"] == "bot.embedded"]
    assert [line.split(" 127.0.0.1:")[0] for line in said if "listening" in line] == [
        "embedded Postgres listening on",
        "embedded Redis listening on",
    ]
    as_root = [line for line in said if line.startswith("running as root")]
    assert len(as_root) == (1 if os.geteuid() == 0 else 0)
    if as_root:
        assert "runs as the system user 'pgserver'" in as_root[0]


async def test_version_names_the_release_and_its_schema_revision() -> None:
    result = await bot("--version")

    assert result.code == 0 and result.err == ""
    version = metadata.version("chatbot-backend")
    assert result.out == f"bot {version} (database schema revision {head_revision()})\n"
