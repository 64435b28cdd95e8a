"""`bot run`, `bot chat` and `bot migrate`: reach or start the servers, see to the
schema, and serve the channels (bot/serve.py runs them as any command)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys

from bot.channels import registry
from bot.channels.console import ConsoleChannel
from bot.channels.dispatch import Dispatcher
from bot.channels.options import ConsoleOptions
from bot.config import Settings
from bot.errors import ConfigError
from bot.health import HealthServer
from bot.runtime import Schema, build_maintenance, open_runtime
from bot.store.migrate import upgrade_to_head
from bot.urls import redact_url
from bot.worker import Worker

log = logging.getLogger("bot")


def _schema(settings: Settings, args: argparse.Namespace) -> Schema:
    migrate = settings.migrate_on_start and not args.no_migrate
    return Schema.MIGRATE if migrate else Schema.REQUIRE_CURRENT


async def migrate(settings: Settings, args: argparse.Namespace) -> int:
    async with open_runtime(settings, schema=Schema.LEAVE) as runtime:
        revision = await upgrade_to_head(runtime.engine, settings.migration_lock_wait_seconds)
        print(f"database at revision {revision} ({redact_url(runtime.endpoints.database_url)})")
    return 0


async def chat(settings: Settings, args: argparse.Namespace) -> int:
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


async def run(settings: Settings, args: argparse.Namespace) -> int:
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
    for spec in specs:  # settings an adapter cannot run with: exit 2 before any store
        spec.options(settings)
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


def _console(dispatcher: Dispatcher, args: argparse.Namespace) -> ConsoleChannel:
    log_file = str(args.log_file) if args.log_file is not None else None
    options = ConsoleOptions(args.user or _login(), sys.stdin.isatty(), log_file)
    return ConsoleChannel(options, dispatcher, sys.stdin, sys.stdout)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "console")
