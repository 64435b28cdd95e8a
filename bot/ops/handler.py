"""The one shape of a `bot ops` command, and how argparse runs it.

A command is a coroutine `(ops, parsed arguments, output) -> exit code`. Its handler
checks the arguments before any store is reached, opens the stores (bot/ops/context.py),
runs it, and maps every failure of our error tree to one line and an exit code:
0 ok, 1 something is down or not found, 2 bad input.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from rich.text import Text

from bot.config import Settings
from bot.errors import (
    BadInput,
    CacheRefused,
    CacheUnavailable,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from bot.logs import redact
from bot.ops.arguments import check_text
from bot.ops.context import Ops, open_ops
from bot.ops.render import Out

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Command = Callable[[Ops, argparse.Namespace, Out], Awaitable[int]]
Check = Callable[[argparse.Namespace, Settings], None]  # raises BadInput
Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

BAD_INPUT = 2
OPS_DOCS = "Each command's redis-cli / psql equivalent: docs/ops.md."
MANAGE_DOCS = "Each command's redis-cli / psql equivalent: docs/ops_manage.md."


def handler(command: Command, check: Check | None = None) -> Handler:
    async def run(settings: Settings, args: argparse.Namespace) -> int:
        out = Out(args.json, settings.secrets())
        try:
            check_text(args)
            if check is not None:
                check(args, settings)
            async with open_ops(settings) as ops:
                return await command(ops, args, out)
        except BadInput as exc:
            out.error(str(exc))
            return BAD_INPUT
        except NotFound as exc:
            out.error(str(exc))
            return 1
        except (StoreError, CacheUnavailable) as exc:
            out.error(f"{failure(exc)}: {describe(exc, out.secrets)}")
            return 1

    return run


def failure(exc: StoreError | CacheUnavailable) -> str:
    """What went wrong with a store: out of reach, or refusing what was asked."""
    if isinstance(exc, StoreUnavailable):
        return "Postgres is unavailable"
    if isinstance(exc, StoreError):
        return "Postgres refused the query"
    if isinstance(exc, CacheRefused):
        return "Redis refused the command"
    return "Redis is unavailable"


def describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """One line naming the driver's error under ours, with any password masked."""
    cause = exc.__cause__ or exc
    cause = getattr(cause, "orig", None) or cause  # SQLAlchemy's wrapper
    cause = cause.__cause__ or cause  # SQLAlchemy's adapter of asyncpg's error
    lines = str(cause).strip().splitlines()
    name = type(cause).__name__
    return redact(f"{name}: {lines[0]}" if lines else name, secrets)


def leaf(
    parent: Subparsers,
    name: str,
    help: str,
    text: str,
    run: Command,
    check: Check | None = None,
    *,
    docs: str = MANAGE_DOCS,
) -> argparse.ArgumentParser:
    """A command: its parser, with --json, running `run` through `handler`."""
    parser = parent.add_parser(name, help=help, description=f"{text} {docs}")
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.set_defaults(handler=handler(run, check))
    return parser


def group(
    parent: Subparsers, name: str, help: str, *, docs: str = MANAGE_DOCS, about: str = ""
) -> Subparsers:
    """A group of commands (`bot ops NAME COMMAND`); `about` explains it in its --help."""
    text = f"{help}. {about} {docs}" if about else f"{help}. {docs}"
    parser = parent.add_parser(name, help=help, description=text)
    return parser.add_subparsers(dest=f"ops_{name}_command", metavar="COMMAND", required=True)


def warn(out: Out, data: dict[str, Any], message: str) -> None:
    """A warning on standard error; with --json also under "warnings" in the result."""
    data.setdefault("warnings", []).append(message)
    out.err.print(Text(f"warning: {redact(message, out.secrets)}", style="yellow"))


def emit(out: Out, data: dict[str, Any], view: Callable[[], None]) -> None:
    out.json(data) if out.as_json else view()
