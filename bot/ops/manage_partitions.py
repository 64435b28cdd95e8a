"""`bot ops partitions list|create`: the monthly partitions of messages (revision 0007)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bot.ops.context import Ops
from bot.ops.render import Out
from bot.retention import ensure_partitions
from bot.store.partitions import Partition, month_name

if TYPE_CHECKING:
    pass


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
