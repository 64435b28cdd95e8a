"""Invariant 7 by scanning: with every secret set to a known value, nothing the bot's
command line shows (output, errors, logs at DEBUG, text and JSON) holds one of them,
as written, URL-encoded or JSON-escaped; in success and in failure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import quote

import pytest

from bot.emulators.llm_api import LLMServer, error
from tests.security.conftest import (
    LLM_API_KEY,
    PG_PASSWORD,
    REDIS_PASSWORD,
    SECRETS,
    Captured,
    Ran,
    ScanStores,
    run_bot,
    unique,
)
from tests.support import ROOT

pytestmark = pytest.mark.timeout(240)

CHAT = "hello there\n/model\n/model gpt-scan-model\n/history\n/reset\n/help\nbye\n"
WRONG_PG_PASSWORD = "pgWrong+Pw/3e1d=x"
WRONG_REDIS_PASSWORD = "rdWrong+Pw/8b2c=y"
ALEMBIC = ROOT / ".venv" / "bin" / "alembic"
ALL_SECRETS = [*SECRETS, WRONG_PG_PASSWORD, WRONG_REDIS_PASSWORD]


def assert_clean(captured: Captured) -> None:
    assert captured.items, "nothing was captured"
    assert captured.leaks(ALL_SECRETS) == []


async def bot(captured: Captured, env: dict[str, str], *args: str, stdin: str | None = None) -> Ran:
    return captured.add_run(
        await run_bot(*args, cwd=Path(env["DATA_DIR"]).parent, env=env, stdin=stdin)
    )


def with_password(url: str, password: str, current: str) -> str:
    return url.replace(f":{quote(current, safe='')}@", f":{quote(password, safe='')}@", 1)


def other_port(url: str, port: int) -> str:
    host = "127.0.0.1:"
    start = url.index(host) + len(host)
    end = start + len(url[start:].split("/", 1)[0])
    return f"{url[:start]}{port}{url[end:]}"


async def test_migrate_and_chat_show_no_secret(scan_env: dict[str, str], llm: LLMServer) -> None:
    captured = Captured()
    migrated = await bot(captured, scan_env | {"LOG_FORMAT": "json"}, "migrate")
    assert migrated.code == 0, migrated.err
    assert ":***@" in migrated.out  # the URL is shown, masked

    user = unique("alice")
    text = await bot(captured, scan_env, "chat", "--user", user, stdin=CHAT)
    as_json = await bot(
        captured, scan_env | {"LOG_FORMAT": "json"}, "chat", "--user", user, stdin="again\n"
    )

    assert text.code == 0 and as_json.code == 0, text.err + as_json.err
    assert "LLM reply to: hello there" in text.out and "LLM reply to: again" in as_json.out
    assert llm.headers[0]["Authorization"] == f"Bearer {LLM_API_KEY}"  # the key was used
    assert any(json.loads(line)["level"] == "debug" for line in as_json.err.splitlines())
    assert_clean(captured)


async def test_settings_from_a_dotenv_file_show_no_secret(
    scan_env: dict[str, str], tmp_path: Path
) -> None:
    """The same secrets read from .env in the working directory instead."""
    secret_names = (
        "DATABASE_URL",
        "REDIS_URL",
        "LLM_API_KEY",
        "DISCORD_BOT_TOKEN",
        "TELEGRAM_BOT_TOKEN",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "TELEGRAM_WEBHOOK_SECRET",
    )
    (tmp_path / ".env").write_text("".join(f"{name}={scan_env[name]}\n" for name in secret_names))
    env = {name: value for name, value in scan_env.items() if name not in secret_names}
    captured = Captured()

    chatted = await bot(captured, env, "chat", "--user", unique("dotenv"), stdin="hi\n")
    health = await bot(captured, env, "ops", "health")

    assert chatted.code == 0, chatted.err
    assert "(echo)" not in chatted.out  # the LLM settings came from .env: not the echo reply
    assert health.code == 0, health.out + health.err
    assert_clean(captured)


async def test_llm_echoing_the_key_in_its_errors_shows_no_secret(
    scan_env: dict[str, str], llm: LLMServer
) -> None:
    captured = Captured()
    llm.then(
        error(500, f"upstream failed for key {LLM_API_KEY}"),
        error(
            401, f"Incorrect API key provided: {LLM_API_KEY}. Authorization: Bearer {LLM_API_KEY}"
        ),
    )
    llm.default = error(401, f"Incorrect API key provided: {LLM_API_KEY}")
    user = unique("bob")
    for log_format in ("text", "json"):
        ran = await bot(
            captured,
            scan_env | {"LOG_FORMAT": log_format},
            "chat",
            "--user",
            user,
            stdin="are you there?\nstill there?\n",
        )
        assert ran.code == 0, ran.err
        assert len(ran.out.strip().splitlines()) >= 2  # each line got an answer
    assert len(llm.requests) >= 3  # the 500 was retried, then the 401s refused
    assert_clean(captured)


async def test_ops_commands_show_no_secret(scan_env: dict[str, str], llm: LLMServer) -> None:
    captured = Captured()
    user = unique("carol")
    assert (await bot(captured, scan_env, "chat", "--user", user, stdin="hello ops\n")).code == 0
    shown = await bot(captured, scan_env, "ops", "user", "show", "console", user, "--json")
    conversation = json.loads(shown.out)["conversations"][0]["id"]

    commands = [
        ("health",),
        ("stats",),
        ("user", "show", "console", user),
        ("user", "export", "console", user),
        ("conversation", "show", str(conversation)),
        ("conversation", "search", "hello"),
        ("flags", "list"),
        ("config", "show"),
        ("config", "show", "console"),
        ("user", "show", "console", "nobody-at-all"),
    ]
    for args in commands:
        runs = await asyncio.gather(
            *(
                bot(captured, scan_env | {"LOG_FORMAT": fmt}, "ops", *args, *extra)
                for fmt, extra in (("text", ()), ("json", ("--json",)))
            )
        )
        for ran in runs:
            assert ran.code in (0, 1), ran  # 1: the user that does not exist
    health = next(text for where, text in captured.items if where == "bot ops health stdout")
    assert ":***@127.0.0.1" in health  # the URLs are shown, masked
    assert_clean(captured)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_stores_down_or_refusing_show_no_secret(
    scan_env: dict[str, str], scan_stores: ScanStores, log_format: str
) -> None:
    captured = Captured()
    env = scan_env | {"LOG_FORMAT": log_format}
    pg_down = env | {"DATABASE_URL": other_port(scan_stores.database_url, 9)}
    pg_refused = env | {
        "DATABASE_URL": with_password(scan_stores.database_url, WRONG_PG_PASSWORD, PG_PASSWORD)
    }
    redis_down = env | {"REDIS_URL": other_port(scan_stores.redis_url, 9)}
    redis_refused = env | {
        "REDIS_URL": with_password(scan_stores.redis_url, WRONG_REDIS_PASSWORD, REDIS_PASSWORD)
    }
    runs: list[Ran] = []
    for broken in (pg_down, pg_refused):
        runs += await asyncio.gather(
            bot(captured, broken, "chat", "--user", "dave", stdin="hello\n"),
            bot(captured, broken, "migrate"),
            bot(captured, broken, "ops", "health", "--json"),
            bot(captured, broken, "ops", "stats"),
            bot(captured, broken, "run", "--channels", "console", stdin="hello\n"),
        )
    for broken in (redis_down, redis_refused):
        runs += await asyncio.gather(
            bot(captured, broken, "chat", "--user", unique("erin"), stdin="hello\n"),
            bot(captured, broken, "ops", "health"),
            bot(captured, broken, "ops", "stats", "--json"),
        )

    assert all(ran.code != 0 for ran in runs[:10]), "Postgres out of reach must fail"
    assert "LLM reply to: hello" in runs[10].out  # Redis down: degraded, still answering
    assert_clean(captured)


async def test_invalid_settings_show_no_secret(scan_env: dict[str, str]) -> None:
    captured = Captured()
    pg = f"postgresql://u:{quote(PG_PASSWORD, safe='')}@127.0.0.1"
    redis = f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1"
    chat = ("chat",)
    broken: list[tuple[tuple[str, ...], dict[str, str]]] = [
        (chat, {"HTTP_PORT": "not-a-port"}),
        (chat, {"LOG_LEVEL": "LOUD"}),
        (chat, {"DATABASE_URL": f"mysql://u:{PG_PASSWORD}@127.0.0.1/db"}),
        (chat, {"DATABASE_URL": f"{pg}:99999/db"}),
        (chat, {"DATABASE_URL": f"{pg}:5432/db?sslmode=sometimes"}),
        (chat, {"REDIS_URL": f"{redis}:port/0"}),
        (chat, {"REDIS_URL": f"memcached://:{REDIS_PASSWORD}@127.0.0.1/0"}),
        (chat, {"REDIS_URL": f"{redis}:6379/zero"}),
        (chat, {"LLM_BASE_URL": f"ftp://key:{LLM_API_KEY}@127.0.0.1/v1"}),
        (
            ("run", "--channels", "telegram"),
            {
                "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/h",
                "TELEGRAM_WEBHOOK_SECRET": f"has {LLM_API_KEY}",
            },
        ),
    ]
    runs = await asyncio.gather(
        *(bot(captured, scan_env | change, *args, stdin="hello\n") for args, change in broken)
    )
    for ran in runs:
        assert ran.code != 0, ran
        assert "Traceback" not in ran.err, ran.err
    assert_clean(captured)


async def test_alembic_command_line_shows_no_secret(
    scan_env: dict[str, str], scan_stores: ScanStores
) -> None:
    """`alembic` itself reads DATABASE_URL through the bot's settings."""
    captured = Captured()
    wrong = with_password(scan_stores.database_url, WRONG_PG_PASSWORD, PG_PASSWORD)
    for url in (scan_stores.database_url, wrong, other_port(scan_stores.database_url, 9)):
        process = await asyncio.create_subprocess_exec(
            str(ALEMBIC),
            "upgrade",
            "head",
            cwd=ROOT,
            env=scan_env | {"DATABASE_URL": url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        captured.add(f"alembic on {url[:12]}", out.decode() + err.decode())
        assert (process.returncode == 0) == (url == scan_stores.database_url), err.decode()
    assert_clean(captured)
