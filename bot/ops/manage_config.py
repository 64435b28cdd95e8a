"""`bot ops config show|set`: a channel's `channel_configs` row, validated, cache invalidated."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bot import setting_keys
from bot.config import Settings
from bot.errors import CacheUnavailable
from bot.ops.context import Ops
from bot.ops.handler import warn
from bot.ops.render import Out

if TYPE_CHECKING:
    pass


def _check_pairs(args: argparse.Namespace, settings: Settings) -> None:
    args.values, args.removed = setting_keys.parse_assignments(args.pairs, settings.allowed_models)


async def _show(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    rows = {row.channel: row for row in await ops.store.channel_configs.rows()}
    if args.channel is None:
        listed = [
            {
                "channel": r.channel,
                "default_model": r.default_model,
                "settings": r.settings,
                "updated_at": r.updated_at,
            }
            for r in rows.values()
        ]
        out.emit({"channel_configs": listed}, _configs_view)
        return 0
    row = rows.get(args.channel)
    lines = setting_keys.effective(
        ops.settings, row.default_model if row else None, row.settings if row else {}
    )
    data: dict[str, Any] = {
        "channel": args.channel,
        "row": row is not None,
        "updated_at": row.updated_at if row else None,
        "cached_ttl_seconds": await _cached_ttl(ops, args.channel),
        "values": [{"key": k, "value": v, "from": s} for k, v, s in lines],
    }

    def show(out: Out, data: dict[str, Any]) -> None:
        out.pairs(f"Channel {args.channel}", {k: v for k, v in data.items() if k != "values"})
        out.table("In force", ["key", "value", "from"], lines)

    out.emit(data, show)
    return 0


def _configs_view(out: Out, data: dict[str, Any]) -> None:
    cells = [tuple(row.values()) for row in data["channel_configs"]]
    columns = ["channel", "default_model", "settings", "updated"]
    out.table("Channel configs", columns, cells, "no channel_configs row")


async def _cached_ttl(ops: Ops, channel: str) -> int | None:
    """Seconds the cached row has left; None if not cached or Redis is unreachable."""
    try:
        return await ops.cache.channel_config_ttl(channel)
    except CacheUnavailable:
        return None


async def _set(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    row = await ops.store.channel_configs.update(args.channel, args.values, args.removed)
    data: dict[str, Any] = {
        "channel": row.channel,
        "set": args.values,
        "removed": args.removed,
        "default_model": row.default_model,
        "settings": row.settings,
        "cache_invalidated": None,
    }
    try:
        data["cache_invalidated"] = await ops.cache.drop_channel_config(args.channel)
    except CacheUnavailable:
        ttl = ops.settings.channel_config_ttl_seconds
        warn(out, data, f"Redis is unreachable: workers may use the cached config for {ttl} s")
    shown = {k: v for k, v in data.items() if k != "warnings"}
    out.emit(data, lambda out, data: out.pairs(f"Channel {row.channel} updated", shown))
    return 0
