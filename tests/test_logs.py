"""Logging: secrets are masked in messages and tracebacks; JSON is one object per line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot.logs import JsonFormatter, RedactingFilter, redact, setup_logging

DSN = "postgresql+asyncpg://bot:hunter2pw@db.example:5432/chat"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging rewires the root logger; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(
    fmt: logging.Formatter, secrets: tuple[str, ...] = ()
) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(fmt)
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"connecting to {DSN}", "connecting to postgresql+asyncpg://bot:***@db.example:5432/chat"),
        ("redis at redis://:r3dis@cache:6379/0 down", "redis at redis://:***@cache:6379/0 down"),
        (
            "dsn postgresql://bot@db/chat?password=qpw&ssl=1",
            "dsn postgresql://bot@db/chat?password=***&ssl=1",
        ),
        ("no secret in here", "no secret in here"),
    ],
)
def test_redact_masks_url_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_masks_registered_secrets_anywhere() -> None:
    assert redact("token xoxb-SECRET-1 and xoxb-SECRET-1 again", ["xoxb-SECRET-1"]) == (
        "token *** and *** again"
    )


def test_filter_masks_message_and_its_arguments() -> None:
    logger, stream = capture(logging.Formatter("%(message)s"), ("tok-ABCDEF",))

    logger.info("reaching %s with token %s", DSN, "tok-ABCDEF")

    out = stream.getvalue()
    assert "hunter2pw" not in out and "tok-ABCDEF" not in out
    assert out == "reaching postgresql+asyncpg://bot:***@db.example:5432/chat with token ***\n"


def test_filter_masks_exception_text() -> None:
    logger, stream = capture(logging.Formatter("%(message)s"), ("tok-ABCDEF",))

    try:
        raise ConnectionError(f"cannot connect to {DSN} using tok-ABCDEF")
    except ConnectionError:
        logger.exception("database down")

    out = stream.getvalue()
    assert "Traceback" in out and "ConnectionError: cannot connect to" in out
    assert "hunter2pw" not in out and "tok-ABCDEF" not in out
    assert "bot:***@db.example" in out


def test_filter_ignores_too_short_secrets() -> None:
    """Masking a two-letter secret would shred every log line."""
    logger, stream = capture(logging.Formatter("%(message)s"), ("ab",))

    logger.info("about cabs")

    assert stream.getvalue() == "about cabs\n"


def test_json_format_is_one_object_per_line() -> None:
    logger, stream = capture(JsonFormatter(), ("tok-ABCDEF",))

    logger.info("first with\nnewline", extra={"channel": "console", "user_id": "u1"})
    logger.warning("second %s", "tok-ABCDEF")
    try:
        raise RuntimeError(f"boom at {DSN}")
    except RuntimeError:
        logger.error("third", exc_info=True)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    assert [(e["level"], e["logger"], e["message"]) for e in entries] == [
        ("info", logger.name, "first with\nnewline"),
        ("warning", logger.name, "second ***"),
        ("error", logger.name, "third"),
    ]
    assert entries[0]["channel"] == "console" and entries[0]["user_id"] == "u1"
    assert "ts" in entries[0]
    assert "RuntimeError: boom at" in entries[2]["error"]
    assert "hunter2pw" not in stream.getvalue() and "tok-ABCDEF" not in stream.getvalue()


def test_setup_logging_json_on_stderr_with_secrets(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", "json", ["tok-ABCDEF"])
    logger = logging.getLogger("bot.test")

    logger.debug("hidden")
    logger.info("using %s and tok-ABCDEF", DSN)

    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "info" and entry["logger"] == "bot.test"
    assert entry["message"] == ("using postgresql+asyncpg://bot:***@db.example:5432/chat and ***")


def test_setup_logging_text_masks_too(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("DEBUG", "text", ["tok-ABCDEF"])

    logging.getLogger("bot.test").debug("token tok-ABCDEF for %s", DSN)

    err = capsys.readouterr().err
    assert "DEBUG" in err and "bot.test" in err and "token ***" in err
    assert "hunter2pw" not in err and "tok-ABCDEF" not in err
