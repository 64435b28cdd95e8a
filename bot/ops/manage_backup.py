"""`bot ops backup` and `bot ops restore` on the command line (bot/ops/backup.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bot.ops import backup
from bot.ops.context import Ops
from bot.ops.handler import warn
from bot.ops.render import Out

if TYPE_CHECKING:
    from bot.config import Settings

    pass


async def _backup(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    with out.progress("dumping tables") as advance:
        data = await backup.backup(ops, args.output, advance)
    out.emit(data, _view("Backed up"))
    return 0


async def _restore(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    with out.progress("restoring tables") as advance:
        data = await backup.restore(ops, args.file, advance)
    if data["revision"] != data["head"]:
        warn(out, data, f"schema at {data['revision']}, this code's is {data['head']}: run "
             "`bot migrate`")  # fmt: skip
    out.emit(data, _view("Restored"))
    return 0


def _view(title: str) -> Any:
    def view(out: Out, data: dict[str, Any]) -> None:
        rows = sorted(data["rows"].items())
        out.table(f"{title}: {data['file']} (revision {data['revision']})", ["table", "rows"], rows)
        out.note(f"{data['seconds']} s", style="dim")

    return view


def check_output(args: argparse.Namespace, settings: Settings) -> None:
    backup.check_output(args.output)


def check_source(args: argparse.Namespace, settings: Settings) -> None:
    backup.check_source(args.file)
