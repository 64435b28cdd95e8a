"""`bot ops user block|unblock|blocked`: the platform users the bot ignores.

A change is written to Postgres and Redis and announced to every worker, which follow
within seconds (bot/blocklist.py), as for feature flags.
"""

from __future__ import annotations

import argparse
from typing import Any

from bot.blocklist import BlockChange, change_block
from bot.cache.blocklist import BlocklistCache
from bot.config import Settings
from bot.domain import BlockedRow
from bot.errors import BadInput, InvalidInput
from bot.ops.context import Ops
from bot.ops.manage import warn_unless_delivered
from bot.ops.render import Out
from bot.validation import check_user_id

MAX_REASON = 500


def check_block(args: argparse.Namespace, settings: Settings) -> None:
    """A user id the bot could see, and a short reason, before any store is reached."""
    try:
        check_user_id(args.user)
    except InvalidInput:
        raise BadInput(f"{args.user!r} is not a user id a platform sends") from None
    reason = getattr(args, "reason", None)
    if reason is not None and not (0 < len(reason.strip()) <= MAX_REASON):
        raise BadInput(f"--reason is a text of 1 to {MAX_REASON} characters")


def _rows(rows: list[BlockedRow]) -> list[dict[str, Any]]:
    return [
        {
            "channel": r.channel,
            "user": r.channel_user_id,
            "reason": r.reason,
            "blocked_at": r.blocked_at,
        }
        for r in rows
    ]


def _blocked_table(out: Out, data: dict[str, Any]) -> None:
    cells = [(r["channel"], r["user"], r["reason"] or "", r["blocked_at"]) for r in data["blocked"]]
    out.table("Blocked users", ["channel", "user", "reason", "blocked at"], cells, "nobody")


async def blocked(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    out.emit({"blocked": _rows(await ops.store.blocklist.rows())}, _blocked_table)
    return 0


async def block(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    reason = args.reason.strip() if args.reason else None
    return await _change(ops, args, out, reason=reason, unblock=False)


async def unblock(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    return await _change(ops, args, out, reason=None, unblock=True)


async def _change(
    ops: Ops, args: argparse.Namespace, out: Out, *, reason: str | None, unblock: bool
) -> int:
    cache = BlocklistCache(ops.cache.redis, ops.cache.keys, ops.cache.guard)
    change: BlockChange = await change_block(
        ops.store.blocklist, cache, args.channel, args.user, reason=reason, unblock=unblock
    )
    if unblock:
        action = "unblocked" if change.existed else "was not blocked"
    else:
        action = "was blocked already" if change.existed else "blocked"
    data: dict[str, Any] = {
        "channel": args.channel,
        "user": args.user,
        "action": action,
        "cached": change.cached,
        "workers_notified": change.notified,
        "blocked": _rows(change.rows),
    }
    warn_unless_delivered(out, data, change, ops.settings.flags_refresh_seconds)

    def view(out: Out, data: dict[str, Any]) -> None:
        summary = {k: v for k, v in data.items() if k not in ("blocked", "warnings")}
        out.pairs(f"User {args.channel}:{args.user}: {action}", summary)

    out.emit(data, view)
    return 0
