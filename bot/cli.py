"""The `bot` command line: run, chat, migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bot.bench.cli import register as register_bench
from bot.channels import registry
from bot.channels.console import ConsoleChannel
from bot.channels.dispatch import Dispatcher
from bot.channels.options import ConsoleOptions
from bot.config import Settings, load_settings
from bot.errors import BotError, ConfigError
from bot.health import HealthServer
from bot.logs import LOG_FILE_NAME, setup_logging
from bot.ops.cli import register as register_ops
from bot.runtime import Schema, build_maintenance, open_runtime
from bot.store.migrate import upgrade_to_head
from bot.urls import redact_url
from bot.worker import Worker

log = logging.getLogger("bot")

DESCRIPTION = """\
A chat-bot backend: Discord, Telegram and Slack adapters over one conversation
service, Redis for hot state, Postgres as the source of truth.

With no DATABASE_URL / REDIS_URL it starts embedded Postgres and Redis under
DATA_DIR (default ./.data). Settings come from the environment or a .env file."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bot", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run the worker: migrate, then serve every configured channel",
        description="Apply pending migrations (unless --no-migrate), then serve the "
        "configured channels, with "
        "/healthz, /readyz and /metrics on HTTP_PORT. With no channel credentials, say which "
        "settings enable which channel and, on an interactive terminal, open the console "
        "chat. SIGTERM/SIGINT finish the messages in flight, then exit 0.",
    )
    run.add_argument(
        "--channels",
        type=_channel_names,
        help="comma-separated channels to start, from discord, telegram, slack, console "
        "(default: every channel whose credentials are set)",
    )
    run.add_argument("--user", default=None, help="console user name (default: your login)")
    _no_migrate_option(run)
    run.set_defaults(handler=_run)

    chat = commands.add_parser(
        "chat",
        help="chat with the bot on this terminal (or from piped input)",
        description="Read messages line by line from standard input and print each reply. "
        "Interactive on a terminal; with piped input, one reply per line, exit 0 at the end. "
        "Example: printf 'hello\\n/model\\n' | bot chat --user alice",
    )
    chat.add_argument("--user", default=None, help="who is chatting (default: your login)")
    _no_migrate_option(chat)
    chat.set_defaults(handler=_chat)

    migrate = commands.add_parser(
        "migrate",
        help="apply pending database migrations and exit",
        description="Bring the Postgres schema to the newest Alembic revision, under an "
        "advisory lock so that several workers starting at once do not race.",
    )
    migrate.set_defaults(handler=_migrate)
    register_ops(commands)
    register_bench(commands)
    return parser


def _no_migrate_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not migrate at start, only check the schema is current (as MIGRATE_ON_START="
        "false does): for a database role that may not change the schema",
    )


def _schema(settings: Settings, args: argparse.Namespace) -> Schema:
    migrate = settings.migrate_on_start and not args.no_migrate
    return Schema.MIGRATE if migrate else Schema.REQUIRE_CURRENT


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return 2
    log_file = _terminal_log(settings, args)
    args.log_file = log_file
    setup_logging(settings.log_level, settings.log_format, settings.secrets(), log_file)
    handler: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = args.handler
    try:
        return asyncio.run(handler(settings, args))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:  # found once running: a port taken, a token refused
        print(f"bot: {exc}", file=sys.stderr)
        return 2
    except BotError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return 1


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    async with open_runtime(settings, schema=Schema.LEAVE) as runtime:
        revision = await upgrade_to_head(runtime.engine, settings.migration_lock_wait_seconds)
        print(f"database at revision {revision} ({redact_url(runtime.endpoints.database_url)})")
    return 0


async def _chat(settings: Settings, args: argparse.Namespace) -> int:
    """The console channel under the worker: SIGTERM/SIGINT stop reading, finish the
    message in flight, close the pools and stop the embedded servers, then exit 0."""
    stop = asyncio.Event()
    _note_stop_signals(stop)  # start-up finishes first: it may be launching servers
    async with open_runtime(settings, schema=_schema(settings, args)) as runtime:
        dispatcher = Dispatcher(runtime.service, runtime.metrics)
        console = _console(dispatcher, args)
        worker = Worker([console], dispatcher, None, settings.shutdown_grace_seconds)
        if stop.is_set():
            worker.request_stop()
        drained = await worker.run()  # with signal handlers of its own while it runs
        _note_stop_signals(stop)  # a second signal must not cut short the stop of servers
    return 0 if drained else 1


def _note_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signum, stop.set)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    specs = registry.select(settings, args.channels)
    wants_console = args.channels is not None and "console" in args.channels
    if not specs and not wants_console:
        needs = "; ".join(f"{spec.name}: set {spec.needs}" for spec in registry.PLATFORM_CHANNELS)
        if not sys.stdin.isatty():
            raise ConfigError(
                f"no channel is configured ({needs}) and standard input is not a terminal "
                "for the console chat; set a channel's credentials, or use `bot chat`"
            )
        # WARNING: LOG_LEVEL=WARNING still says why, on the terminal of the chat too.
        log.warning("no channel is configured (%s): opening the console chat", needs)
        wants_console = True
    async with open_runtime(settings, schema=_schema(settings, args)) as runtime:
        dispatcher = Dispatcher(runtime.service, runtime.metrics, runtime.streams)
        adapters = [registry.build(spec, settings, dispatcher) for spec in specs]
        if wants_console:
            adapters.append(_console(dispatcher, args))
        guard = runtime.cache.guard
        health = HealthServer(
            runtime.engine,
            runtime.redis,
            runtime.metrics,
            adapters,
            lambda: guard.state,
            closing=lambda: dispatcher.closing,
        )
        upkeep = build_maintenance(runtime)
        grace = settings.shutdown_grace_seconds
        worker = Worker(adapters, dispatcher, health, grace, maintenance=upkeep)
        drained = await worker.run(settings.http_host, settings.http_port)
    return 0 if drained else 1


def _terminal_log(settings: Settings, args: argparse.Namespace) -> Path | None:
    """Where the log goes while a person chats on this terminal (DATA_DIR/bot.log), so
    that the chat shows only the chat and warnings; None: the log goes to stderr."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    if args.command == "run":
        try:
            platforms = registry.select(settings, args.channels)
        except ConfigError:
            return None  # refused before anything starts: said on stderr
        named = args.channels is not None and "console" in args.channels
        if platforms and not named:
            return None  # a worker serving platforms: its log is what the operator watches
    elif args.command != "chat":
        return None
    return settings.data_dir / LOG_FILE_NAME


def _channel_names(text: str) -> tuple[str, ...]:
    try:
        return registry.parse_names(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None  # argparse: usage error, exit 2


def _console(dispatcher: Dispatcher, args: argparse.Namespace) -> ConsoleChannel:
    log_file = str(args.log_file) if args.log_file is not None else None
    options = ConsoleOptions(args.user or _login(), sys.stdin.isatty(), log_file)
    return ConsoleChannel(options, dispatcher, sys.stdin, sys.stdout)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "console")
