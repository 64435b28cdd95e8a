"""`bot ops backup` and `bot ops restore` on the command line (bot/ops/backup.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.ops import backup
from bot.ops.context import Ops
from bot.ops.handler import leaf, warn
from bot.ops.render import Out

if TYPE_CHECKING:
    from bot.ops.handler import Subparsers


def register_backup(ops: Subparsers) -> None:
    dump = leaf(
        ops,
        "backup",
        "the whole database to one file (pg_dump, custom format)",
        "Write every table of DATABASE_URL's database (the embedded one when unset) to "
        "--output with the real pg_dump, in its custom format; progress per table on "
        "standard error. The file restores with `bot ops restore` or pg_restore.",
        _backup,
        lambda args, settings: backup.check_output(args.output),
    )
    dump.add_argument("--output", "-o", type=Path, required=True, metavar="FILE")
    load = leaf(
        ops,
        "restore",
        "a backup into an empty database, then checked",
        "Restore FILE (from `bot ops backup`) into DATABASE_URL's database, which must "
        "hold no tables yet (createdb a new one), with the real pg_restore; then check "
        "the schema revision against this code's and count every table's rows.",
        _restore,
        lambda args, settings: backup.check_source(args.file),
    )
    load.add_argument("file", type=Path, metavar="FILE")


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
