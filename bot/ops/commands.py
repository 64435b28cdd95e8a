"""The inspection commands of `bot ops`: open the stores, query, print, exit code.

Each command is a coroutine (stores, parsed arguments, output) -> exit code: 0 ok,
1 something is down or not found, 2 bad input. bot/ops/cli.py wires them to argparse;
`handler` checks the arguments before any store is reached and maps every failure to
its message and exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from bot.cache.keys import Keys
from bot.config import Settings
from bot.errors import BadInput, NotFound, StoreError, StoreUnavailable
from bot.ops import conversations, inspect, records, views
from bot.ops.arguments import check_text
from bot.ops.inspect import describe
from bot.ops.render import Out, to_json
from bot.runtime import Endpoints, build_store, create_redis, keys_for, open_endpoints
from bot.store.engine import create_engine
from bot.store.store import Store
from bot.urls import redact_url

BAD_INPUT = 2
Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


@dataclass(frozen=True, slots=True)
class Stores:
    settings: Settings
    endpoints: Endpoints
    store: Store
    redis: Redis
    keys: Keys


Command = Callable[[Stores, argparse.Namespace, Out], Awaitable[int]]
Check = Callable[[argparse.Namespace, Settings], None]  # raises BadInput
Read = Callable[..., Awaitable[dict[str, Any]]]  # (store, redis, keys, *fields) -> report
View = Callable[[Out, Any], None]


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """Clients of both stores, without migrating or starting the service: read-mostly."""
    async with open_endpoints(settings) as endpoints:
        engine = create_engine(settings, endpoints.database_url, pool_size=2)
        redis = create_redis(settings, endpoints.redis_url)
        try:
            store = build_store(settings, engine)
            yield Stores(settings, endpoints, store, redis, keys_for(settings))
        finally:
            await redis.aclose()
            await engine.dispose()


def store_failure(exc: BaseException) -> str:
    """What went wrong with a store: out of reach, or refusing what was asked."""
    if isinstance(exc, RedisConnectionError | RedisTimeout):
        return "Redis is unavailable"
    if isinstance(exc, RedisError):
        return "Redis refused the command"
    if isinstance(exc, StoreUnavailable):
        return "Postgres is unavailable"
    if isinstance(exc, StoreError):
        return "Postgres refused the query"
    return "Postgres or Redis is unavailable"  # the connection failed before either named it


def handler(command: Command, check: Check | None = None) -> Handler:
    """The argparse handler: check the arguments, open the stores, run, map failures
    to exit codes."""

    async def run(settings: Settings, args: argparse.Namespace) -> int:
        out = Out(args.json, settings.secrets())
        try:
            check_text(args)
            if check is not None:
                check(args, settings)
            async with open_stores(settings) as stores:
                return await command(stores, args, out)
        except BadInput as exc:
            out.error(str(exc))
            return BAD_INPUT
        except NotFound as exc:
            out.error(str(exc))
            return 1
        except inspect.STORE_ERRORS as exc:
            out.error(f"{store_failure(exc)}: {describe(exc, out.secrets)}")
            return 1

    return run


def report(read: Read, view: View, *fields: str) -> Command:
    """A command that reads one report from both stores, about what the arguments named
    `fields` say, and prints it."""

    async def run(stores: Stores, args: argparse.Namespace, out: Out) -> int:
        values = [getattr(args, field) for field in fields]
        out.emit(await read(stores.store, stores.redis, stores.keys, *values), view)
        return 0

    return run


# --- the commands ---------------------------------------------------------------------


async def health(stores: Stores, args: argparse.Namespace, out: Out) -> int:
    data = await inspect.health(stores.store, stores.redis, args.timeout, out.secrets)
    data["postgres"]["url"] = redact_url(stores.endpoints.database_url)
    data["redis"]["url"] = redact_url(stores.endpoints.redis_url)
    out.emit(data, views.health_view)
    return 0 if data["ok"] else 1


async def stats(stores: Stores, args: argparse.Namespace, out: Out) -> int:
    with out.progress("scanning Redis keys") as advance:
        data = await inspect.redis_stats(stores.redis, stores.keys, advance)
    data.update(await inspect.postgres_stats(stores.store))
    out.emit(data, views.stats_view)
    return 0


user_show = report(records.show_user, views.user_view, "channel", "user")


async def user_export(stores: Stores, args: argparse.Namespace, out: Out) -> int:
    summary = await records.user_summary(stores.store, args.channel, args.user)
    with out.progress("exporting conversations", total=summary["conversations"]) as advance:
        data = await records.export_user(
            stores.store, stores.redis, stores.keys, args.channel, args.user, advance
        )
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
        "conversations": len(data["conversations"]),
        "messages": sum(len(c["messages"]) for c in data["conversations"]),
    }
    out.emit(written, views.export_view)
    return 0


def _write_private(path: str, document: str) -> None:
    """Personal data: readable by the owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(document)


async def user_delete(stores: Stores, args: argparse.Namespace, out: Out) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            out.error(
                "refusing to delete without confirmation: stdin is not a terminal; "
                "pass --yes to delete anyway"
            )
            return 2
        summary = await records.user_summary(stores.store, args.channel, args.user)
        question = (
            f"Delete user {args.channel}:{args.user} ({summary['user']['id']}) with "
            f"{summary['conversations']} conversations and {summary['messages']} messages "
            "from Postgres, and their keys from Redis? This cannot be undone."
        )
        if not await asyncio.to_thread(out.confirm, question):
            out.error("not confirmed: nothing deleted")
            return 1
    data = await records.delete_user(
        stores.store, stores.redis, stores.keys, args.channel, args.user
    )
    out.emit(data, views.delete_view)
    return 0


conversation_show = report(conversations.show_conversation, views.conversation_view, "id", "limit")


async def conversation_search(stores: Stores, args: argparse.Namespace, out: Out) -> int:
    data = await conversations.search_messages(stores.store, " ".join(args.text), args.limit)
    out.emit(data, views.search_view)
    return 0
