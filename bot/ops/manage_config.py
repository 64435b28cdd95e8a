"""`bot ops config show|set`: a channel's `channel_configs` row, validated, cache invalidated."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from bot.config import Settings
from bot.ops import channel_settings
from bot.ops.arguments import channel
from bot.ops.manage_support import Manage, emit, leaf, warn
from bot.ops.render import Out

if TYPE_CHECKING:
    from bot.ops.manage_support import Subparsers


def register_config(config: Subparsers) -> None:
    keys = "; ".join(f"{k} ({s.help})" for k, s in channel_settings.CONFIG_KEYS.items())
    show = leaf(
        config,
        "show",
        "a channel's config and the values in force",
        "The channel's channel_configs row and, for every key, the value in force and "
        "where it comes from (the row, or the global setting). Without CHANNEL: every row.",
        _show,
    )
    show.add_argument("channel", nargs="?", type=channel, metavar="CHANNEL")
    set_ = leaf(
        config,
        "set",
        "change a channel's config (validated); its cache is invalidated",
        f"Set keys of the channel's row; `key=` (empty) removes one. Keys: {keys}.",
        _set,
        _check_pairs,
    )
    set_.add_argument("channel", type=channel, metavar="CHANNEL")
    set_.add_argument("pairs", nargs="+", metavar="KEY=VALUE")


def _check_pairs(args: argparse.Namespace, settings: Settings) -> None:
    args.values, args.removed = channel_settings.parse_assignments(args.pairs, settings)


async def _show(manage: Manage, args: argparse.Namespace, out: Out) -> int:
    rows = {row.channel: row for row in await manage.store.channel_configs.rows()}
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
        cells = [tuple(r.values()) for r in listed]
        columns = ["channel", "default_model", "settings", "updated"]
        view = lambda: out.table("Channel configs", columns, cells, "no channel_configs row")  # noqa: E731
        emit(out, {"channel_configs": listed}, view)
        return 0
    row = rows.get(args.channel)
    lines = channel_settings.effective(
        manage.settings, row.default_model if row else None, row.settings if row else {}
    )
    data: dict[str, Any] = {
        "channel": args.channel,
        "row": row is not None,
        "updated_at": row.updated_at if row else None,
        "cached_ttl_seconds": await _cached_ttl(manage, args.channel),
        "values": [{"key": k, "value": v, "from": s} for k, v, s in lines],
    }

    def show() -> None:
        out.pairs(f"Channel {args.channel}", {k: v for k, v in data.items() if k != "values"})
        out.table("In force", ["key", "value", "from"], lines)

    emit(out, data, show)
    return 0


async def _cached_ttl(manage: Manage, channel: str) -> int | None:
    """Seconds the cached row has left; None if not cached or Redis is unreachable."""
    try:
        ttl = int(await manage.redis.ttl(manage.keys.channel_config(channel)))
    except (RedisError, OSError):
        return None
    return ttl if ttl >= 0 else None


async def _set(manage: Manage, args: argparse.Namespace, out: Out) -> int:
    row = await manage.store.channel_configs.update(args.channel, args.values, args.removed)
    data: dict[str, Any] = {
        "channel": row.channel,
        "set": args.values,
        "removed": args.removed,
        "default_model": row.default_model,
        "settings": row.settings,
        "cache_invalidated": None,
    }
    try:
        deleted = await manage.redis.delete(manage.keys.channel_config(args.channel))
        data["cache_invalidated"] = bool(deleted)
    except (RedisError, OSError):
        ttl = manage.settings.channel_config_ttl_seconds
        warn(out, data, f"Redis is unreachable: workers may use the cached config for {ttl} s")
    shown = {k: v for k, v in data.items() if k != "warnings"}
    emit(out, data, lambda: out.pairs(f"Channel {row.channel} updated", shown))
    return 0
