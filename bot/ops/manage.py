"""`bot ops flags|config|chat|cache|purge|partitions|backup|restore`: change what the
bot does, clean up after it, and keep its data safe.

bot/ops/cli.py calls `register_manage` with the `ops` sub-parsers. This module holds
the flags commands; config is in bot/ops/manage_config.py, cache and purge in
bot/ops/manage_cache.py, backup and restore in bot/ops/manage_backup.py. Tables for
people, one JSON object with --json.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from bot.domain import FlagRow
from bot.errors import BadInput, FlagError
from bot.flags import change_flag
from bot.flagset import GLOBAL, FlagSet, parse_value
from bot.mirror import Change
from bot.ops.context import Ops
from bot.ops.handler import warn
from bot.ops.render import Out

if TYPE_CHECKING:
    pass


def _check_value(args: argparse.Namespace, settings: Settings) -> None:
    try:
        args.parsed_value = parse_value(args.name, args.value)
    except FlagError as exc:
        raise BadInput(str(exc)) from None


def _rows(rows: list[FlagRow]) -> list[dict[str, Any]]:
    return [
        {"scope": r.scope, "name": r.name, "value": r.value, "updated_at": r.updated_at}
        for r in rows
    ]


def _flags_table(out: Out, data: dict[str, Any]) -> None:
    cells = [(r["scope"], r["name"], r["value"], r.get("updated_at")) for r in data["flags"]]
    out.table("Feature flags", ["scope", "name", "value", "updated"], cells, "no flag is set")


async def _list(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    out.emit({"flags": _rows(await ops.store.flags.rows())}, _flags_table)
    return 0


async def _get(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    flags = FlagSet.from_rows(await ops.store.flags.rows())
    value = flags.value(args.name, args.channel)
    own = args.channel is not None and args.name in flags.channels.get(args.channel, {})
    source = args.channel if own else (GLOBAL if args.name in flags.global_ else "unset")
    data = {"name": args.name, "channel": args.channel, "value": value, "from": source}
    out.emit(data, lambda out, data: out.pairs(f"Flag {args.name}", data))
    return 0


async def _set(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    return await _change(ops, args, out, args.parsed_value, unset=False)


async def _unset(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    return await _change(ops, args, out, None, unset=True)


async def _change(ops: Ops, args: argparse.Namespace, out: Out, value: Any, *, unset: bool) -> int:
    scope = args.channel or GLOBAL
    change = await change_flag(
        ops.store.flags, ops.flag_cache(), scope, args.name, value, unset=unset
    )
    action = ("unset" if change.existed else "was not set") if unset else "set"
    data: dict[str, Any] = {
        "scope": scope,
        "name": args.name,
        "value": None if unset else value,
        "action": action,
        "cached": change.cached,
        "workers_notified": change.notified,
        "flags": _rows(change.rows),
    }
    warn_unless_delivered(out, data, change, ops.settings.flags_refresh_seconds)

    def view(out: Out, data: dict[str, Any]) -> None:
        summary = {k: v for k, v in data.items() if k not in ("flags", "warnings")}
        out.pairs(f"Flag {args.name}: {action}", summary)
        _flags_table(out, data)

    out.emit(data, view)
    return 0


def warn_unless_delivered(
    out: Out, data: dict[str, Any], change: Change[Any], refresh: float
) -> None:
    """Warn when a change held in every worker's memory (flags, the blocklist) is in
    Postgres only, or the workers could not be told."""
    if not change.cached:
        warn(
            out,
            data,
            "Redis is unreachable: the change is in Postgres only. Workers that lost Redis "
            "read it from there and refill Redis when it is back; run this again once Redis "
            "answers to be sure every worker follows.",
        )
    elif change.publish_error is not None:
        warn(
            out,
            data,
            f"the change is in Postgres and Redis, but telling the workers failed "
            f"({change.publish_error}): they pick it up within FLAGS_REFRESH_SECONDS "
            f"({refresh:g} s).",
        )
