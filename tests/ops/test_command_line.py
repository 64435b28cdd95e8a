"""`bot ops` as the real command: its help, and bad input refused before any store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from bot.config import Settings
from tests.ops.conftest import Ops
from tests.support import free_port
from tests.test_cli import bot

pytestmark = pytest.mark.timeout(15)


async def test_help_explains_every_command(ops: Ops) -> None:
    helps = {}
    for path in (("--help",), ("user", "--help"), ("conversation", "--help")):
        helps[path[0]] = await ops(*path)
    for leaf in ("health", "stats", "user show", "user export", "user delete", "flags set"):
        helps[leaf] = await ops(*leaf.split(), "--help")
    helps["search"] = await ops("conversation", "search", "--help")

    assert all(result.code == 0 for result in helps.values())
    for name in ("health", "stats", "user", "conversation", "flags", "config", "cache", "purge"):
        assert name in helps["--help"].out
    assert {"show", "export", "delete"} <= set(helps["user"].out.split())
    assert {"show", "search"} <= set(helps["conversation"].out.split())
    assert all("--json" in helps[leaf].out for leaf in ("health", "stats", "user show"))
    assert "--yes" in helps["user delete"].out and "--output" in helps["user export"].out
    assert "docs/ops.md" in helps["stats"].out
    assert "maintenance" in helps["flags set"].out and "replies_disabled" in helps["flags set"].out


@pytest.mark.timeout(60)  # a real `python -m bot`: see below
async def test_the_bot_command_line_runs_ops(settings: Settings) -> None:
    assert settings.database_url is not None and settings.redis_url is not None
    env = {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
    }

    health = await bot("ops", "health", "--json", **env)

    assert health.code == 0, health
    assert json.loads(health.out)["ok"] is True


# Each `python -m bot` takes seconds to start on a loaded machine: one at a time, with
# room to spare, so that the limit is never what fails.
@pytest.mark.timeout(120)
async def test_bad_input_is_refused_before_reaching_any_store(tmp_path: Path) -> None:
    # No server is configured: anything reaching for one would start embedded servers.
    data_dir = tmp_path / "data"
    env = {"DATA_DIR": str(data_dir)}

    refused_config = await bot("ops", "config", "set", "console", "colour=blue", **env)
    refused_flag = await bot("ops", "flags", "set", "maintenance", "maybe", **env)
    refused_age = await bot("ops", "purge", "--older-than", "90", **env)
    refused_bytes = await bot("ops", "user", "show", "console", "bad\udcffbyte", **env)  # b"\xff"

    codes = (refused_config.code, refused_flag.code, refused_age.code, refused_bytes.code)
    assert codes == (2, 2, 2, 2)
    assert "not valid UTF-8" in refused_bytes.err
    assert "valid keys: default_model, max_tokens" in refused_config.err
    assert "true or false" in refused_flag.err and "is not a duration" in refused_age.err
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("down", "command", "says"),
    [
        (
            {"DATABASE_URL": "postgresql://postgres@127.0.0.1:{port}/x"},
            ("cache", "flush", "--user", "console:nobody", "--yes"),  # Postgres first
            "Postgres is unavailable: ",
        ),
        (
            {"REDIS_URL": "redis://127.0.0.1:{port}/0"},
            ("cache", "flush", "--conversation", str(uuid.uuid4()), "--yes"),  # Redis only
            "Redis is unavailable: ",
        ),
    ],
)
async def test_a_store_out_of_reach_is_one_line_and_exit_1(
    ops: Ops, down: dict[str, str], command: tuple[str, ...], says: str
) -> None:
    port = str(free_port())
    env = {name: value.format(port=port) for name, value in down.items()}

    ran = await ops(*command, **env)

    assert ran.code == 1, ran
    told = [line for line in ran.err.splitlines() if line.startswith("bot ops: ")]
    assert len(told) == 1 and told[0].startswith(f"bot ops: {says}"), ran.err
    assert "Traceback" not in ran.err


@pytest.mark.timeout(60)  # a real `python -m bot`
async def test_the_bot_command_line_fails_with_one_json_object(settings: Settings) -> None:
    assert settings.database_url is not None and settings.redis_url is not None
    env = {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
    }

    missing = await bot("ops", "user", "show", "console", "nobody-at-all", "--json", **env)
    mistyped = await bot("ops", "user", "show", "nosuchchan", "1", "--json", **env)

    assert missing.code == 1 and json.loads(missing.out) == {
        "error": "no user 'nobody-at-all' on channel 'console'",
        "exit_code": 1,
    }
    assert mistyped.code == 2 and json.loads(mistyped.out)["exit_code"] == 2
    assert "unknown channel 'nosuchchan'" in json.loads(mistyped.out)["error"]
