"""JSON on standard output, as `bot ops … --json` prints it: results and error objects.
Light on purpose: an argument error prints its JSON object before anything else loads."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime
from typing import Any


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(data: Any) -> str:
    return json.dumps(data, default=json_default, ensure_ascii=False, indent=2)


def error_object(message: str, exit_code: int) -> dict[str, Any]:
    """What a command prints on standard output when it fails with --json: the one
    line it prints on standard error, and its exit code. A byte of an argument that
    is not UTF-8 (a lone surrogate) is written as an escape: stdout could not take it."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": text, "exit_code": exit_code}


def write_json(data: Any) -> None:
    sys.stdout.write(to_json(data) + "\n")
    sys.stdout.flush()
