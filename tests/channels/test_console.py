"""`bot chat` end to end: a real process, piped input, real Postgres and Redis."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from bot.config import Settings
from bot.embedded.process import live_process
from tests.support import ROOT, new_user
from tests.test_embedded import time_waits_on


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


def test_chat_from_any_directory_continues_in_the_per_user_data_dir_on_the_same_port(
    tmp_path: Path, user_data_home: Path
) -> None:
    """Issue 17, items 5 and 6: `bot chat` from another directory started a new, empty
    database there (DATA_DIR=.data), and the embedded Postgres port changed at every
    run because the last run's connections sat in TIME-WAIT on it."""
    env = chat_env(None, tmp_path)
    del env["DATA_DIR"]
    env["LOG_LEVEL"] = "INFO"
    user = f"wherever-{uuid.uuid4().hex[:6]}"
    data_dir = user_data_home / "chatbot-backend"
    here, there = tmp_path / "here", tmp_path / "there"
    # There, an earlier version's embedded database, in its default DATA_DIR.
    (there / ".data" / "postgres").mkdir(parents=True)
    (there / ".data" / "postgres" / "PG_VERSION").write_text("16\n")
    ran, said, waiting = [], [], []
    for cwd, text in ((here, "remember me"), (there, "still there?")):
        cwd.mkdir(exist_ok=True)
        done = chat(f"{text}\n", user, env, cwd)
        assert done.returncode == 0, done.stderr
        ran.append(done)
        said.append(listening_lines(done.stderr))
        waiting.append(time_waits_on(int(said[-1]["Postgres"][0])))
    first, second = ran

    assert waiting[0] > 0, "the case to test: the port in TIME-WAIT when the next run starts"
    assert "0 earlier messages" in first.stdout and "2 earlier messages" in second.stdout
    assert said[0]["Postgres"][1] == said[1]["Postgres"][1] == str(data_dir / "postgres")
    assert said[0]["Redis"][1] == said[1]["Redis"][1] == str(data_dir / "redis")
    assert said[1]["Postgres"][0] == said[0]["Postgres"][0]  # the same port
    assert said[1]["Redis"][0] == said[0]["Redis"][0]
    assert not (here / ".data").exists()
    assert f"{there / '.data'} holds the data of an earlier version" in second.stderr
    assert "Set DATA_DIR=.data to go on with the old data" in second.stderr
    assert "earlier version" not in first.stderr


def listening_lines(stderr: str) -> dict[str, tuple[str, str]]:
    """What each `embedded … listening on` line says: the server's (port, data dir)."""
    found = re.findall(
        r"^embedded (\w+) listening on 127\.0\.0\.1:(\d+) \(data in (.+?)\)", stderr, re.M
    )
    return {kind: (port, data) for kind, port, data in found}


def test_chat_with_stdin_at_dev_null_exits_at_once(
    settings: Settings, redis: object, tmp_path: Path
) -> None:
    """/dev/null is a character device the event loop cannot watch: read it all the same."""
    done = subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--user", new_user()],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=chat_env(settings, tmp_path),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr


def test_chat_as_a_user_id_too_long_to_store_is_refused_not_a_crash(
    settings: Settings, redis: object, tmp_path: Path
) -> None:
    done = chat("hello\nagain\n", "x" * 300, chat_env(settings, tmp_path), ROOT)

    assert done.returncode == 0, done.stderr
    refusal = (
        "I can't answer messages from this account: its user id is 300 characters long, "
        "and the limit is 255."
    )
    assert done.stdout.splitlines() == [refusal, refusal]
    assert "Traceback" not in done.stderr


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return process.stdout.readline()


def test_sigterm_stops_the_chat_and_its_embedded_servers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    chat_process = subprocess.Popen(
        [sys.executable, "-m", "bot", "chat", "--user", "terminated"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=chat_env(None, data_dir),
        cwd=tmp_path,
    )
    pids: list[tuple[int, str]] = []
    left_running: list[int] = []
    try:
        assert chat_process.stdin is not None
        chat_process.stdin.write("hello\n")
        chat_process.stdin.flush()
        assert '"hello"' in read_line(chat_process, 120)  # servers up, migrated, answering
        postmaster = (data_dir / "postgres" / "postmaster.pid").read_text().split()
        redis_state = json.loads((data_dir / "redis" / "server.json").read_text())
        pids = [(int(postmaster[0]), "postgres"), (redis_state["pid"], "redis-server")]
        assert all(live_process(pid, name) for pid, name in pids)

        chat_process.send_signal(signal.SIGTERM)

        assert chat_process.wait(timeout=60) == 0
    finally:
        if chat_process.poll() is None:
            chat_process.kill()
        _, err = chat_process.communicate(timeout=30)
        for pid, name in pids:  # never leave a server behind, even when the test fails
            if (left := live_process(pid, name)) is not None:
                left_running.append(pid)
                left.kill()
    assert "Traceback" not in err
    assert left_running == []
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
