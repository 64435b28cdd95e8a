"""The one rule of every `bot ops` command that deletes data: `user delete`, `purge`
and `cache flush`.

- `--dry-run` prints what would be deleted, as counts, and changes nothing (exit 0);
- otherwise, on a terminal, the command shows those counts and asks; anything but
  `y`/`yes` deletes nothing (NotConfirmed: exit 1);
- without a terminal to ask on it refuses unless `--yes` is given: the command line of
  a script must say so (BadInput: exit 2, before any store is reached).

Commands that change settings (flags, config, chat) or make partitions delete no data
and do not ask.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bot.errors import BadInput, NotConfirmed
from bot.ops.render import Out

RULE = (
    "It deletes data: on a terminal it shows what and asks first; without one it refuses "
    "unless --yes is given; --dry-run counts what would go and changes nothing."
)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask: delete (scripts)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted; change nothing"
    )


def refuse_unconfirmable(args: argparse.Namespace) -> None:
    """Without a terminal nobody can be asked: the command line must say --yes."""
    if args.yes or args.dry_run or sys.stdin.isatty():
        return
    raise BadInput(
        "refusing to delete without confirmation: standard input is not a terminal; "
        "pass --yes to delete, or --dry-run to see what would be deleted"
    )


async def confirm(out: Out, args: argparse.Namespace, question: str) -> None:
    """Ask (unless --yes); NotConfirmed unless the answer is yes."""
    if args.yes:
        return
    if not await asyncio.to_thread(out.confirm, question):
        raise NotConfirmed("not confirmed: nothing deleted")
