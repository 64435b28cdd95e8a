"""An error nobody caught still reaches standard error through the masking log handler:
Python's own traceback printer knows nothing of secrets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

SECRET = "Uncaught-S3cret-value"
CRASH = f"""
from bot.logs import setup_logging
setup_logging("INFO", {{fmt!r}}, [{SECRET!r}])
def connect():
    raise RuntimeError("cannot connect to postgresql://bot:{SECRET}@db/chat with {SECRET}")
connect()
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_uncaught_error_is_logged_masked(fmt: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CRASH.format(fmt=fmt)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )

    assert done.returncode == 1
    assert SECRET not in done.stderr + done.stdout
    assert "RuntimeError: cannot connect to postgresql://bot:***@db/chat with ***" in (
        done.stderr if fmt == "text" else json.loads(done.stderr.strip().splitlines()[-1])["error"]
    )
    assert "in connect" in done.stderr  # the traceback is kept: it is what a bug report needs


def test_keyboard_interrupt_stays_quiet() -> None:
    crash = "from bot.logs import setup_logging\nsetup_logging('INFO', 'text', [])\n"
    done = subprocess.run(
        [sys.executable, "-c", crash + "raise KeyboardInterrupt"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode != 0 and "unexpected error" not in done.stderr
