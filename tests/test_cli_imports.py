"""The command line imports only what a command uses (issue: CLI start time): a
`--help` imports no driver, no Redis or HTTP client, no Alembic, no platform SDK and
no LLM client; `bot ops` and `bot chat` import no platform SDK and no HTTP server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bot.config import Settings
from tests.support import ROOT, worker_env

NEVER_FOR_HELP = (
    "sqlalchemy", "asyncpg", "redis", "aiohttp", "alembic", "httpx", "openai",
    "discord", "telegram", "slack_bolt", "slack_sdk",
)  # fmt: skip
SDKS = ("discord", "telegram", "slack_bolt", "slack_sdk", "aiohttp")

# Runs `bot ARGS` in this process and prints, last, the top-level packages imported.
PROBE = """
import sys
from bot.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("IMPORTED " + " ".join(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def imported(args: list[str], env: dict[str, str] | None = None, stdin: str = "") -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    [line] = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED ")]
    return set(line.split()[1:])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["ops", "--help"],
        ["ops", "health", "--help"],
        ["ops", "stats", "--help"],
        ["ops", "partitions", "create", "--help"],
        ["chat", "--help"],
        ["run", "--help"],
        ["bench", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_no_driver_client_or_sdk(args: list[str]) -> None:
    assert imported(args) & set(NEVER_FOR_HELP) == set()


def test_ops_and_chat_import_no_platform_sdk(settings: Settings) -> None:
    env = worker_env(settings)
    ops = imported(["ops", "stats", "--json"], env)
    chat = imported(["chat", "--user", "imports"], env, stdin="hello\n")

    assert "sqlalchemy" in ops and "redis" in ops  # they did run
    assert ops & set(SDKS) == set()
    assert "sqlalchemy" in chat
    assert chat & set(SDKS) - {"aiohttp"} == set()
