"""`bot ops partitions list|create`: the monthly partitions of messages (revision 0007)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bot.ops.context import Ops
from bot.ops.handler import group, leaf
from bot.ops.render import Out
from bot.retention import ensure_partitions
from bot.store.partitions import Partition, month_name

if TYPE_CHECKING:
    from bot.ops.handler import Subparsers

ABOUT = (
    "messages is partitioned by month of its timestamp (UTC): messages_pYYYY_MM, plus "
    "messages_default for rows of a month without a partition of its own. The worker "
    "makes the current month and PARTITIONS_AHEAD more every MAINTENANCE_INTERVAL_SECONDS, "
    "and with RETENTION_DAYS set drops whole months older than that."
)


def register_partitions(ops: Subparsers) -> None:
    partitions = group(
        ops, "partitions", "the monthly partitions of messages: list, create", about=ABOUT
    )
    leaf(
        partitions,
        "list",
        "each partition with its bounds, rows and size",
        f"{ABOUT} Lists every partition, oldest first, with its bounds, exact row count "
        "(one count per partition: progress on standard error) and size on disk.",
        _list,
    )
    create = leaf(
        partitions,
        "create",
        "make the partitions of the coming months now",
        f"{ABOUT} Makes the partitions of the current month and --ahead more that do not "
        "exist yet, as the worker does (safe beside running workers: one at a time, "
        "under a Postgres advisory lock). Rows of those months already in "
        "messages_default move into their partition.",
        _create,
    )
    create.add_argument(
        "--ahead",
        type=_months,
        default=None,
        metavar="N",
        help="months after the current one (default: PARTITIONS_AHEAD)",
    )


def _months(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 120:
        raise argparse.ArgumentTypeError("a number of months from 0 to 120")
    return int(value)


def _row(partition: Partition) -> dict[str, Any]:
    return {
        "name": partition.name,
        "from": partition.lower,
        "to": partition.upper,
        "rows": partition.rows,
        "bytes": partition.bytes,
    }


def _view(out: Out, data: dict[str, Any]) -> None:
    rows = [
        (p["name"], p["from"] or "(default)", p["to"] or "", p["rows"], p["bytes"])
        for p in data["partitions"]
    ]
    out.table("Partitions of messages", ["partition", "from", "to", "rows", "bytes"], rows)
    if data.get("created") is not None:
        out.note(f"created: {', '.join(data['created']) or 'none (all there already)'}")


async def _list(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    queries = ops.store.partitions
    with out.progress("counting rows per partition") as advance:
        found = await queries.partitions(advance)
    out.emit({"partitions": [_row(p) for p in found]}, _view)
    return 0


async def _create(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    ahead = ops.settings.partitions_ahead if args.ahead is None else args.ahead
    queries = ops.store.partitions
    made = await ensure_partitions(queries, ahead)
    with out.progress("counting rows per partition") as advance:
        found = await queries.partitions(advance)
    names = [month_name(month) for month in made]
    out.emit({"created": names, "partitions": [_row(p) for p in found]}, _view)
    return 0
