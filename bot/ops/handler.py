"""The one shape of a `bot ops` command, and how argparse runs it.

A command is a coroutine `(ops, parsed arguments, output) -> exit code`. Its handler
checks the arguments before any store is reached, opens the stores (bot/ops/context.py),
runs it, and maps every failure of our error tree to one line and an exit code
(`exit_code`; with --json also one JSON error object on standard output):

    0  done
    1  it could not be done: a store is down or refused, what the command names does
       not exist, the operator answered no, or (health) something is not healthy
    2  the command line or the settings are wrong: an invalid argument or value (an
       unknown channel, a malformed id or age, a number out of range), options that
       do not go together, a deletion without a terminal and without --yes, an invalid
       setting. Refused before any store is reached where it can be told from the
       arguments alone.

Argument errors found by argparse itself exit 2 the same way (JsonErrorParser).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from rich.text import Text

from bot.config import Settings
from bot.errors import (
    BadInput,
    BotError,
    CacheRefused,
    CacheUnavailable,
    ConfigError,
    StoreError,
    StoreUnavailable,
)
from bot.logs import redact
from bot.ops import deletion
from bot.ops.arguments import check_text
from bot.ops.context import Ops, open_ops
from bot.ops.render import Out, error_object, write_json

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Command = Callable[[Ops, argparse.Namespace, Out], Awaitable[int]]
Check = Callable[[argparse.Namespace, Settings], None]  # raises BadInput
Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

OK, FAILED, BAD_INPUT = 0, 1, 2
OPS_DOCS = "Each command's redis-cli / psql equivalent: docs/ops.md."
MANAGE_DOCS = "Each command's redis-cli / psql equivalent: docs/ops_manage.md."


class JsonErrorParser(argparse.ArgumentParser):
    """argparse's parser, which on an argument error also prints the JSON error object
    on standard output when --json is among the arguments: scripts parse one object
    whatever went wrong. Sub-parsers are of the same class."""

    wants_json = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        given = sys.argv[1:] if args is None else args
        self.wants_json = "--json" in given
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if self.wants_json:
            write_json(error_object(f"{self.prog}: {message}", BAD_INPUT))
        super().error(message)  # usage and the message on standard error, exit 2


def exit_code(exc: BotError) -> int:
    """The rule of the module docstring, for an error of our tree."""
    return BAD_INPUT if isinstance(exc, BadInput | ConfigError) else FAILED


def handler(command: Command, check: Check | None = None, *, deletes: bool = False) -> Handler:
    async def run(settings: Settings, args: argparse.Namespace) -> int:
        out = Out(args.json, settings.secrets())
        try:
            check_text(args)
            if check is not None:
                check(args, settings)
            if deletes:  # after the arguments' own checks: a wrong one is the news
                deletion.refuse_unconfirmable(args)
            async with open_ops(settings) as ops:
                return await command(ops, args, out)
        except (StoreError, CacheUnavailable) as exc:
            return out.fail(f"{failure(exc)}: {describe(exc, out.secrets)}", FAILED)
        except BotError as exc:  # BadInput, NotFound, NotConfirmed, a setting, a server
            return out.fail(str(exc), exit_code(exc))

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
    deletes: bool = False,
) -> argparse.ArgumentParser:
    """A command: its parser, with --json, running `run` through `handler`. A command
    that `deletes` data follows bot/ops/deletion.py: --yes, --dry-run, and it asks."""
    description = f"{text} {deletion.RULE} {docs}" if deletes else f"{text} {docs}"
    parser = parent.add_parser(name, help=help, description=description)
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object for scripts (on failure: {"error": …, "exit_code": …})',
    )
    if deletes:
        deletion.add_options(parser)
    parser.set_defaults(handler=handler(run, check, deletes=deletes))
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
