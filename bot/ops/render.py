"""Output of the inspection commands: rich tables for people, one JSON object for scripts.

Tables and JSON go to standard output; errors, prompts and progress bars to standard
error, so `--json` output stays parseable. URLs are put into a report already redacted
(bot/config.py redact_url); besides, every value printed (a JSON string, a table cell,
a message) has any secret of the settings masked, with the log filter's rule: secrets
too short to tell apart from ordinary text are left to redact_url. Masking works on
values, never on rendered text, so JSON keys and syntax are never touched.
Stored text is shown as plain text, never as rich markup.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from bot.logs import maskable, redact

_UNITS = ("B", "kB", "MB", "GB", "TB")
# Off a terminal rich would wrap at 80 columns and split UUIDs over two lines; piped
# output is for grep, so it gets wide lines unless COLUMNS says otherwise.
PIPED_WIDTH = 200


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


def make_console(stderr: bool = False) -> Console:
    """A console for people; wide when its output is piped (see PIPED_WIDTH)."""
    made = Console(stderr=stderr, highlight=False)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        made.width = PIPED_WIDTH
    return made


def masked(data: Any, secrets: Sequence[str]) -> Any:
    """`data` with the secrets masked in every string value; keys and structure kept."""
    if isinstance(data, str):
        return redact(data, secrets)
    if isinstance(data, bytes):
        return redact(data.decode("utf-8", "replace"), secrets)
    if isinstance(data, Mapping):
        return {key: masked(value, secrets) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [masked(value, secrets) for value in data]
    return data


def size(value: Any) -> str:
    """Bytes, human readable (1024-based, like pg_size_pretty)."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in _UNITS:
        if amount < 1024 or unit == _UNITS[-1]:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)  # not reached


def show(value: Any) -> str:
    """One value as a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
    if isinstance(value, dict | list):
        return json.dumps(value, default=json_default, ensure_ascii=False) if value else "-"
    return str(value)


class Out:
    """Where one command prints: `data` as JSON, or tables built by the command's view."""

    def __init__(
        self,
        as_json: bool,
        secrets: Iterable[str] = (),
        console: Console | None = None,
        err: Console | None = None,
    ) -> None:
        self.as_json = as_json
        self.secrets = maskable(secrets)
        self.console = console or make_console()
        self.err = err or make_console(stderr=True)

    def clean(self, value: Any) -> str:
        return show(masked(value, self.secrets))

    def json(self, data: Any) -> None:
        write_json(masked(data, self.secrets))

    def emit(self, data: Any, view: Callable[[Out, Any], None]) -> None:
        """The command's result: as JSON with --json, else as the view's tables."""
        if self.as_json:
            self.json(data)
        else:
            view(self, data)

    def error(self, message: str) -> None:
        text = Text(f"bot ops: {redact(message, self.secrets)}", style="red")
        self.err.print(text, soft_wrap=True)

    def fail(self, message: str, exit_code: int) -> int:
        """The command failed: one line on standard error and, with --json, the error
        object on standard output (scripts always get one JSON object)."""
        self.error(message)
        if self.as_json:
            self.json(error_object(message, exit_code))
        return exit_code

    def note(self, message: str, style: str = "") -> None:
        self.console.print(Text(redact(message, self.secrets), style=style))

    def pairs(self, title: str, values: Mapping[str, Any]) -> None:
        """A two-column table: one field per line."""
        table = Table(title=title, title_justify="left", show_header=False, min_width=len(title))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for name, value in values.items():
            table.add_row(name, Text(self.clean(value)))
        self.console.print(table)

    def table(
        self,
        title: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        empty: str = "none",
    ) -> None:
        rows = list(rows)
        if not rows:
            self.note(f"{title}: {empty}", style="dim")
            return
        table = Table(title=title, title_justify="left", min_width=len(title))
        for column in columns:
            numeric = column.startswith(("#", "size", "scans")) or column.endswith("ms")
            table.add_column(column, justify="right" if numeric else "left", overflow="fold")
        for row in rows:
            table.add_row(
                *(cell if isinstance(cell, Text) else Text(self.clean(cell)) for cell in row)
            )
        self.console.print(table)

    @contextmanager
    def progress(self, label: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """A progress bar on standard error; nothing with --json or off a terminal."""
        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        else:
            columns += [TextColumn("{task.completed:,.0f}")]
        bar = Progress(
            *columns,
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
            disable=self.as_json or not self.err.is_terminal,
        )
        with bar:
            task = bar.add_task(label, total=total)
            yield lambda done: bar.advance(task, done)

    def confirm(self, question: str) -> bool:
        """Ask on the terminal; only `yes` (or `y`) confirms."""
        self.err.print(Text(redact(question, self.secrets) + " [y/N] ", style="bold"), end="")
        try:
            answer = input()
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    def highlighted(self, snippet: str, marks: tuple[str, str]) -> Text:
        """A search snippet with the matched words in bold instead of between marks."""
        result = Text()
        start, stop = marks
        for index, part in enumerate(redact(snippet, self.secrets).split(start)):
            word, found, rest = part.partition(stop)
            if index and found:
                result.append(word, style="bold yellow")
                result.append(rest)
            else:
                result.append(part if index == 0 else start + part)
        return result
