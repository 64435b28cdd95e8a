"""The one shape of a `bot ops` command, and how argparse runs it.

A command is a coroutine `(ops, parsed arguments, output) -> exit code`. Its handler
checks the arguments before any store is reached, opens the stores (bot/ops/context.py),
runs it, and maps every failure of our error tree to one line and an exit code
(`exit_code`; with --json also one JSON error object on standard output):

    0  done
    1  it could not be done: a store is down or refused, what the command names does
       not exist, the operator answered no, or (health) something is not healthy
    2  the command line or the settings are wrong: an invalid argument or value (an
       unknown channel, a malformed id or age, a number out of range), options that
       do not go together, a deletion without a terminal and without --yes, an invalid
       setting. Refused before any store is reached where it can be told from the
       arguments alone.

Argument errors found by argparse itself exit 2 the same way (bot/ops/parsing.py,
JsonErrorParser).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from rich.text import Text

from bot.config import Settings
from bot.errors import (
    BadInput,
    BotError,
    CacheRefused,
    CacheUnavailable,
    ConfigError,
    StoreError,
    StoreUnavailable,
)
from bot.logs import redact
from bot.ops import deletion
from bot.ops.arguments import check_text
from bot.ops.context import Ops, open_ops
from bot.ops.parsing import BAD_INPUT
from bot.ops.render import Out

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Command = Callable[[Ops, argparse.Namespace, Out], Awaitable[int]]
Check = Callable[[argparse.Namespace, Settings], None]  # raises BadInput
Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

OK, FAILED = 0, 1


def exit_code(exc: BotError) -> int:
    """The rule of the module docstring, for an error of our tree."""
    return BAD_INPUT if isinstance(exc, BadInput | ConfigError) else FAILED


def handler(command: Command, check: Check | None = None, *, deletes: bool = False) -> Handler:
    async def run(settings: Settings, args: argparse.Namespace) -> int:
        out = Out(args.json, settings.secrets())
        try:
            check_text(args)
            if check is not None:
                check(args, settings)
            if deletes:  # after the arguments' own checks: a wrong one is the news
                deletion.refuse_unconfirmable(args)
            async with open_ops(settings) as ops:
                return await command(ops, args, out)
        except (StoreError, CacheUnavailable) as exc:
            return out.fail(f"{failure(exc)}: {describe(exc, out.secrets)}", FAILED)
        except BotError as exc:  # BadInput, NotFound, NotConfirmed, a setting, a server
            return out.fail(str(exc), exit_code(exc))

    return run


def failure(exc: StoreError | CacheUnavailable) -> str:
    """What went wrong with a store: out of reach, or refusing what was asked."""
    if isinstance(exc, StoreUnavailable):
        return "Postgres is unavailable"
    if isinstance(exc, StoreError):
        return "Postgres refused the query"
    if isinstance(exc, CacheRefused):
        return "Redis refused the command"
    return "Redis is unavailable"


def describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """One line naming the driver's error under ours, with any password masked."""
    cause = exc.__cause__ or exc
    cause = getattr(cause, "orig", None) or cause  # SQLAlchemy's wrapper
    cause = cause.__cause__ or cause  # SQLAlchemy's adapter of asyncpg's error
    lines = str(cause).strip().splitlines()
    name = type(cause).__name__
    return redact(f"{name}: {lines[0]}" if lines else name, secrets)


def warn(out: Out, data: dict[str, Any], message: str) -> None:
    """A warning on standard error; with --json also under "warnings" in the result."""
    data.setdefault("warnings", []).append(message)
    out.err.print(Text(f"warning: {redact(message, out.secrets)}", style="yellow"))


def emit(out: Out, data: dict[str, Any], view: Callable[[], None]) -> None:
    out.json(data) if out.as_json else view()
