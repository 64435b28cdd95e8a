"""Logging: one line per event, text or JSON, with every known secret masked."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType
from typing import Any

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]+)@")
# password=, and a TLS key's passphrase: sslpassword= (libpq), ssl_password= (redis-py).
_QUERY_PASSWORD = re.compile(r"(?i)(?P<key>[?&](?:ssl_?)?password=)[^&\s'\"]+")
_EXTRA_FIELDS = ("channel", "user_id", "conversation_id", "chat_id")
# A shorter secret (a password "e") is too common in ordinary text to mask there: it
# would mangle every word that holds it. URL passwords of any length are masked by
# the patterns above.
MIN_SECRET_LENGTH = 4


def maskable(secrets: Iterable[str]) -> list[str]:
    """The secrets worth masking wherever they appear in text."""
    return [secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask passwords in URLs and every given secret value."""
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    text = _QUERY_PASSWORD.sub(r"\g<key>***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = maskable(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = redact(record.getMessage(), self.secrets)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info), self.secrets
            )
            record.exc_info = None
        record.msg, record.args = message, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                entry[name] = str(getattr(record, name))
        if record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def announce(logger: logging.Logger, message: str) -> None:
    """A line an operator needs whatever LOG_LEVEL (where a server listens, what it was
    run as): printed as it is, or, with LOG_FORMAT=json, as a JSON line like the log's,
    so that a JSON log stays JSON from its first line."""
    formatters = [handler.formatter for handler in logging.getLogger().handlers]
    as_json = next((f for f in formatters if isinstance(f, JsonFormatter)), None)
    if as_json is not None:
        message = as_json.format(
            logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None)
        )
    print(message, file=sys.stderr, flush=True)


LOG_FILE_NAME = "bot.log"  # under DATA_DIR, while a person chats on the terminal
LOG_FILE_BYTES = 10 * 1024 * 1024  # a chat's log file rotates at this size, 3 kept


def setup_logging(
    level: str, fmt: str, secrets: Iterable[str] = (), log_file: Path | None = None
) -> None:
    """Log at `level` to stderr; with `log_file` (a person chatting on this terminal),
    only warnings and errors go to stderr, between the chat's lines, and the whole log
    to that file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers[0].setLevel(max(logging.WARNING, logging.getLevelName(level)))
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(RotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES, backupCount=3))
    for handler in handlers:
        handler.addFilter(RedactingFilter(secrets))
        handler.setFormatter(_formatter(fmt, dated=handler is not handlers[0]))
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook = _log_uncaught
    for noisy in (
        "asyncio",
        "alembic.runtime.migration",
        "alembic.runtime.plugins",
        "pgserver",
        "httpx",
        "httpx2",
        "openai",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _formatter(fmt: str, *, dated: bool) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    stamp = "%Y-%m-%d %H:%M:%S" if dated else "%H:%M:%S"  # a file outlives the day
    return logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", stamp)


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    """An error nobody caught goes through the masking handler: Python's own printer
    would write its message, which may quote a URL or a token, to stderr as it is."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("bot").critical("unexpected error", exc_info=(kind, error, traceback))
