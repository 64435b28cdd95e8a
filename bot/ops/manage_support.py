"""What the management commands share: the parser helpers and the handler adapter.

The handler is bot/ops/commands.py's (arguments checked before any store is reached,
stores opened the same way, the same exit codes: 0 ok, 1 down or not found, 2 bad
input); this adds the errors of the retried store and of the bounded Redis calls.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.text import Text

from bot.cache.keys import Keys
from bot.config import Settings
from bot.errors import CacheUnavailable, StoreUnavailable
from bot.logs import redact
from bot.ops.commands import Check, Stores, handler
from bot.ops.render import Out
from bot.store.store import Store

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
OPS_REDIS_TIMEOUT = 2.0  # seconds for one Redis call of a command: not the hot path
T = TypeVar("T")
DOCS = "Each command's redis-cli / psql equivalent: docs/ops_manage.md."


class Bounded:
    """The Redis calls of a one-shot command: bounded in time, failing as CacheUnavailable
    (no circuit breaker, and none of the worker's log lines about degrading)."""

    def __init__(self, op_timeout: float) -> None:
        self.op_timeout = op_timeout

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.op_timeout):
                return await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailable(f"Redis unavailable: {exc.__class__.__name__}") from exc


@dataclass(frozen=True, slots=True)
class Manage:
    """The stores as the management commands use them: SQL only through the Store."""

    settings: Settings
    store: Store
    redis: Redis
    keys: Keys
    guard: Bounded

    @classmethod
    def of(cls, stores: Stores) -> Manage:
        settings = stores.settings
        guard = Bounded(max(settings.redis_op_timeout_seconds, OPS_REDIS_TIMEOUT))
        return cls(settings, stores.store, stores.redis, stores.keys, guard)


Command = Callable[[Manage, argparse.Namespace, Out], Awaitable[int]]


def managed(command: Command, check: Check | None = None) -> Handler:
    """The argparse handler of a management command."""

    async def run(stores: Stores, args: argparse.Namespace, out: Out) -> int:
        try:
            return await command(Manage.of(stores), args, out)
        except StoreUnavailable as exc:
            out.error(f"Postgres failed: {exc}")
            return 1
        except CacheUnavailable as exc:
            out.error(str(exc))
            return 1

    return handler(run, check)


def leaf(
    parent: Subparsers, name: str, help: str, text: str, run: Command, check: Check | None = None
) -> argparse.ArgumentParser:
    parser = parent.add_parser(name, help=help, description=f"{text} {DOCS}")
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.set_defaults(handler=managed(run, check))
    return parser


def group(parent: Subparsers, name: str, help: str) -> Subparsers:
    parser = parent.add_parser(name, help=help, description=f"{help}. {DOCS}")
    return parser.add_subparsers(dest=f"ops_{name}_command", metavar="COMMAND", required=True)


def warn(out: Out, data: dict[str, Any], message: str) -> None:
    """A warning on standard error; with --json also under "warnings" in the result."""
    data.setdefault("warnings", []).append(message)
    out.err.print(Text(f"warning: {redact(message, out.secrets)}", style="yellow"))


def emit(out: Out, data: dict[str, Any], view: Callable[[], None]) -> None:
    out.json(data) if out.as_json else view()
