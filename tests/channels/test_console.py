"""`bot chat` end to end: a real process, piped input, real Postgres and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from bot.config import Settings
from tests.conftest import ROOT
from tests.support import new_user


def chat_env(settings: Settings | None, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX"):
        env.pop(name, None)
    env["DATA_DIR"] = str(data_dir)
    env["LOG_LEVEL"] = "WARNING"
    if settings is not None:
        env["DATABASE_URL"] = settings.database_url.get_secret_value()  # type: ignore[union-attr]
        env["REDIS_URL"] = settings.redis_url.get_secret_value()  # type: ignore[union-attr]
        env["REDIS_KEY_PREFIX"] = settings.redis_key_prefix
    return env


def chat(lines: str, user: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--user", user],
        input=lines,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_piped_chat_answers_each_line(settings: Settings, redis: object, tmp_path: Path) -> None:
    user = new_user()
    done = chat("hello\n/model\nsecond\n", user, chat_env(settings, tmp_path), ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        'You said: "hello" (0 earlier messages in my context; model gpt-4o-mini)',
        "I'm answering with the model gpt-4o-mini. Change it with /model NAME.",
        'You said: "second" (2 earlier messages in my context; model gpt-4o-mini)',
    ]
    # A second process continues the same conversation.
    again = chat("third\n", user, chat_env(settings, tmp_path), ROOT)
    assert again.stdout.strip().endswith("(4 earlier messages in my context; model gpt-4o-mini)")


def test_chat_without_configuration_uses_embedded_servers(tmp_path: Path) -> None:
    """What `make run` does on a bare machine: embedded Postgres and Redis, migrated."""
    data_dir = tmp_path / "data"
    env = chat_env(None, data_dir)
    env["LOG_LEVEL"] = "INFO"
    user = f"embedded-{uuid.uuid4().hex[:6]}"
    first = chat("remember me\n", user, env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "0 earlier messages" in first.stdout
    assert "embedded Postgres" in first.stderr and "embedded Redis" in first.stderr
    assert "migrated from empty to" in first.stderr
    # The data survives a restart of the servers, and they were stopped on exit.
    second = chat("still there?\n", user, env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "2 earlier messages" in second.stdout
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
