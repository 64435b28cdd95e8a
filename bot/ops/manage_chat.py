"""`bot ops chat list|show|set|unset`: a chat's (or thread's) settings over its platform's,
validated; every worker drops its copy at once (bot/chat_configs.py)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from bot import setting_keys
from bot.cache.chat_configs import ChatConfigCache, Place
from bot.chat_configs import ChatConfigChange, change_chat_config
from bot.config import Settings
from bot.domain import ChatConfigRow, ChatKind, Scope
from bot.errors import BadInput
from bot.ops.cli_manage import CONVERSATIONS_SHOWN
from bot.ops.context import Ops
from bot.ops.handler import warn
from bot.ops.render import Out

if TYPE_CHECKING:
    pass


def _check_pairs(args: argparse.Namespace, settings: Settings) -> None:
    keys = setting_keys.CHAT_KEYS
    args.values, args.removed = setting_keys.parse_assignments(
        args.pairs, settings.allowed_models, keys
    )


def _check_keys(args: argparse.Namespace, settings: Settings) -> None:
    unknown = [key for key in args.keys if key not in setting_keys.CHAT_KEYS]
    if unknown:
        valid = setting_keys.valid_keys(setting_keys.CHAT_KEYS)
        raise BadInput(f"unknown key {unknown[0]!r}; valid keys: {valid}")
    args.values, args.removed = {}, list(dict.fromkeys(args.keys))


def _place(args: argparse.Namespace) -> Place:
    return Place(args.channel, args.chat, args.thread or None)


def _row(row: ChatConfigRow | None) -> dict[str, Any] | None:
    return None if row is None else asdict(row)


async def _list(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    rows = [asdict(row) for row in await ops.store.chat_configs.rows(args.channel)]
    out.emit({"chat_configs": rows}, _list_view)
    return 0


def _list_view(out: Out, data: dict[str, Any]) -> None:
    columns = ["channel", "chat", "thread", "default_model", "settings", "updated"]
    cells = [
        (r["channel"], r["chat_id"], r["thread_id"] or "-", r["default_model"], r["settings"],
         r["updated_at"])
        for r in data["chat_configs"]
    ]  # fmt: skip
    out.table("Chat configs", columns, cells, "no chat has settings of its own")


async def _show(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    place = _place(args)
    configs = ops.store.chat_configs
    chat = await configs.row(place.channel, place.chat_id)
    thread = (
        await configs.row(place.channel, place.chat_id, place.thread_id)
        if place.thread_id
        else None
    )
    platform = {row.channel: row for row in await ops.store.channel_configs.rows()}.get(
        place.channel
    )
    layers = [
        ("thread", thread.default_model, thread.settings) if thread else None,
        ("chat", chat.default_model, chat.settings) if chat else None,
        ("channel", platform.default_model, platform.settings) if platform else None,
    ]
    lines = setting_keys.layered(
        ops.settings, [layer for layer in layers if layer], setting_keys.CHAT_KEYS
    )
    kind = ChatKind.THREAD if place.thread_id else ChatKind.GROUP
    scope = Scope(kind, place.chat_id, place.thread_id)
    held = await ops.store.records.chat_conversations(
        place.channel, scope.key, place.thread_id is None, CONVERSATIONS_SHOWN
    )
    data = {
        "channel": place.channel,
        "chat_id": place.chat_id,
        "thread_id": place.thread_id,
        "scope": scope.key,
        "rows": {"chat": _row(chat), "thread": _row(thread)},
        "values": [{"key": k, "value": v, "from": s} for k, v, s in lines],
        "conversations": [asdict(conversation) for conversation in held],
    }
    out.emit(data, _show_view)
    return 0


def _show_view(out: Out, data: dict[str, Any]) -> None:
    where = f"{data['channel']} chat {data['chat_id']}"
    if data["thread_id"]:
        where += f", thread {data['thread_id']}"
    rows = [(v["key"], v["value"], v["from"]) for v in data["values"]]
    out.table(f"{where}: in force", ["key", "value", "from"], rows)
    cells = [
        (c["id"], c["scope"], c["is_active"], c["channel_user_id"] or "(shared)",
         c["last_activity"], c["messages"])
        for c in data["conversations"]
    ]  # fmt: skip
    columns = ["conversation", "scope", "active", "user", "last activity", "# messages"]
    out.table("Conversations", columns, cells, "no conversation held here yet")


async def _set(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    place = _place(args)
    cache = ChatConfigCache(ops.cache.redis, ops.cache.keys, ops.cache.guard)
    change = await change_chat_config(
        ops.store.chat_configs, cache, place, args.values, args.removed
    )
    data: dict[str, Any] = {
        "channel": place.channel,
        "chat_id": place.chat_id,
        "thread_id": place.thread_id,
        "set": args.values,
        "removed": args.removed,
        "row": _row(change.row),
        "workers_notified": change.notified,
    }
    _warn_unless_told(out, data, change, ops.settings.channel_config_ttl_seconds)
    shown = {k: v for k, v in data.items() if k != "warnings"}
    out.emit(data, lambda out, data: out.pairs("Chat settings updated", shown))
    return 0


def _warn_unless_told(out: Out, data: dict[str, Any], change: ChatConfigChange, ttl: int) -> None:
    if not change.dropped:
        warn(
            out,
            data,
            f"the change is in Postgres, but Redis could not be told ({change.error}): "
            f"workers may use the settings they hold for up to {ttl} s",
        )
