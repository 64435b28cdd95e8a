"""How any `bot` command runs once parsed: its settings, its log, its event loop, and
its failures as exit codes. bot/cli.py parses the command line and imports this module
only once a command runs; the command's own code comes with its handler (bot/lazy.py):
bot/start.py (run, chat, migrate), bot/ops, bot/bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bot.channels import registry
from bot.config import Settings, load_settings, misspelt_settings
from bot.errors import BotError, ConfigError
from bot.logs import LOG_FILE_NAME, setup_logging
from bot.ops.jsonout import error_object, write_json

log = logging.getLogger("bot")


def execute(args: argparse.Namespace) -> int:
    """Run the parsed command: 0 done, 1 it failed, 2 a setting is wrong (one line each)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        if getattr(args, "json", False):  # `bot ops … --json`: scripts parse one object
            write_json(error_object(f"bot: {exc}", 2))
        return 2
    log_file = _terminal_log(settings, args)
    args.log_file = log_file
    setup_logging(settings.log_level, settings.log_format, settings.secrets(), log_file)
    for warning in misspelt_settings(os.environ):
        log.warning(warning)
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
