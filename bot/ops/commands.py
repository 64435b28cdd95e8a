"""The inspection commands of `bot ops`: health, stats, user, conversation.

Each is a command of bot/ops/handler.py: (ops, parsed arguments, output) -> exit code;
bot/ops/cli.py wires them to argparse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bot.errors import BadInput
from bot.ops import conversations, deletion, events, inspect, records, usage, views
from bot.ops.context import Ops
from bot.ops.handler import Command
from bot.ops.jsonout import to_json
from bot.ops.render import Out
from bot.urls import redact_url

Read = Callable[..., Awaitable[dict[str, Any]]]  # (ops, *argument values) -> report
View = Callable[[Out, Any], None]


async def health(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    replica = None
    if ops.has_replica:
        replica = inspect.Replica(ops.reads, ops.settings.replica_lag_warning_seconds)
    data = await inspect.health(ops.store, ops.cache, args.timeout, out.secrets, replica)
    data["postgres"]["url"] = redact_url(ops.endpoints.database_url)
    data["redis"]["url"] = redact_url(ops.endpoints.redis_url)
    if ops.endpoints.database_read_url is not None:
        data["replica"]["url"] = redact_url(ops.endpoints.database_read_url)
    out.emit(data, views.health_view)
    return 0 if data["ok"] else 1


async def stats(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    with out.progress("scanning Redis keys") as advance:
        data = await inspect.redis_stats(ops.cache, advance)
    data.update(await inspect.postgres_stats(ops.store, ops.reads))
    data["tokens_last_24h"] = await usage.last_day(ops)
    out.emit(data, views.stats_view)
    return 0


def report(read: Read, view: View, *fields: str) -> Command:
    """A command that reads one report, about what the arguments named `fields` say,
    and prints it."""

    async def run(ops: Ops, args: argparse.Namespace, out: Out) -> int:
        out.emit(await read(ops, *(getattr(args, name) for name in fields)), view)
        return 0

    return run


user_show = report(records.show_user, views.user_view, "channel", "user")


async def user_export(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    summary = await records.user_summary(ops, args.channel, args.user, on_replica=True)
    with out.progress("exporting conversations", total=summary["conversations"]) as advance:
        data = await records.export_user(ops, args.channel, args.user, advance)
    document = to_json(data) + "\n"  # as stored: the export is not redacted
    if args.output is None:
        sys.stdout.write(document)
        return 0
    try:
        await asyncio.to_thread(_write_private, args.output, document)
    except OSError as exc:  # the path given, not a store: say so
        raise BadInput(f"cannot write {args.output}: {exc.strerror or exc}") from None
    written = {
        "output": args.output,
        "user": data["user"]["id"],
        "scopes": len(data["scopes"]),
        "conversations": sum(len(s["conversations"]) for s in data["scopes"]),
        "messages": sum(len(c["messages"]) for s in data["scopes"] for c in s["conversations"]),
    }
    out.emit(written, views.export_view)
    return 0


def _write_private(path: str, document: str) -> None:
    """Personal data: readable by the owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(document)


async def user_delete(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    if args.dry_run or not args.yes:
        preview = await records.delete_preview(ops, args.channel, args.user)
        if args.dry_run:
            out.emit(preview, views.delete_preview_view)
            return 0
        pg, keys = preview["postgres"], sum(preview["redis"].values())
        await deletion.confirm(
            out,
            args,
            f"Delete user {args.channel}:{args.user} ({preview['user']['id']}) with "
            f"{pg['conversations']} conversations and {pg['messages']} messages (what they "
            f"wrote in shared ones included) from Postgres, and {keys} keys from Redis? This "
            "cannot be undone.",
        )
    data = await records.delete_user(ops, args.channel, args.user)
    out.emit(data, views.delete_view)
    return 0


conversation_show = report(conversations.show_conversation, views.conversation_view, "id", "limit")
event_show = report(events.show_event, views.event_view, "channel", "event")


async def conversation_search(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    data = await conversations.search_messages(ops, " ".join(args.text), args.limit)
    out.emit(data, views.search_view)
    return 0
