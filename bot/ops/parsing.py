"""The command line of `bot ops`: its parser class, and how a command and a group of
commands are declared. Each command names its code ("module:function", bot/lazy.py),
which bot/ops/handler.py runs, so that building the parsers (`--help`) imports no store,
driver or printer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from bot.lazy import Lazy
from bot.ops.jsonout import error_object, write_json

if TYPE_CHECKING:
    from bot.config import Settings

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

BAD_INPUT = 2  # the exit code of a wrong command line (bot/ops/handler.py)
OPS_DOCS = "Each command's redis-cli / psql equivalent: docs/ops.md."
MANAGE_DOCS = "Each command's redis-cli / psql equivalent: docs/ops_manage.md."
DELETION_RULE = (
    "It deletes data: on a terminal it shows what and asks first; without one it refuses "
    "unless --yes is given; --dry-run counts what would go and changes nothing."
)  # bot/ops/deletion.py


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


@dataclass(frozen=True, slots=True)
class OpsCommand:
    """A command's handler: `run` (ops, arguments, output) -> exit code, after `check`
    (arguments, settings), both named; `deletes`: bot/ops/deletion.py's rule applies."""

    run: str
    check: str | None = None
    deletes: bool = False

    def __call__(self, settings: Settings, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
        handler = Lazy("bot.ops.handler:handler").load()
        check = Lazy(self.check).load() if self.check else None
        command = handler(Lazy(self.run).load(), check, deletes=self.deletes)
        coroutine: Coroutine[Any, Any, int] = command(settings, args)
        return coroutine


def leaf(
    parent: Subparsers,
    name: str,
    help: str,
    text: str,
    run: str,
    check: str | None = None,
    *,
    docs: str = MANAGE_DOCS,
    deletes: bool = False,
) -> argparse.ArgumentParser:
    """A command: its parser, with --json, running the function named `run`. A command
    that `deletes` data follows bot/ops/deletion.py: --yes, --dry-run, and it asks."""
    description = f"{text} {DELETION_RULE} {docs}" if deletes else f"{text} {docs}"
    parser = parent.add_parser(name, help=help, description=description)
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object for scripts (on failure: {"error": …, "exit_code": …})',
    )
    if deletes:
        parser.add_argument("--yes", "-y", action="store_true", help="do not ask: delete (scripts)")
        parser.add_argument(
            "--dry-run", action="store_true", help="print what would be deleted; change nothing"
        )
    parser.set_defaults(handler=OpsCommand(run, check, deletes))
    return parser


def group(
    parent: Subparsers, name: str, help: str, *, docs: str = MANAGE_DOCS, about: str = ""
) -> Subparsers:
    """A group of commands (`bot ops NAME COMMAND`); `about` explains it in its --help."""
    text = f"{help}. {about} {docs}" if about else f"{help}. {docs}"
    parser = parent.add_parser(name, help=help, description=text)
    return parser.add_subparsers(dest=f"ops_{name}_command", metavar="COMMAND", required=True)
