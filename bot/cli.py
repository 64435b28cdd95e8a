"""The `bot` command line: the parsers of run, chat, migrate, ops and bench.

Building them imports no command's code (each handler is named, bot/lazy.py): `--help`
answers at once. bot/serve.py runs the command parsed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from bot.bench.cli import register as register_bench
from bot.channels.names import parse_names
from bot.errors import ConfigError
from bot.lazy import Lazy
from bot.ops.cli import register as register_ops
from bot.ops.parsing import JsonErrorParser

DESCRIPTION = """\
A chat-bot backend: Discord, Telegram and Slack adapters over one conversation
service, Redis for hot state, Postgres as the source of truth.

With no DATABASE_URL / REDIS_URL it starts embedded Postgres and Redis under
DATA_DIR (default: your user data directory, e.g. ~/.local/share/chatbot-backend).
Settings come from the environment or a .env file."""


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = (
        JsonErrorParser(  # --json commands get their argument errors as JSON too
            prog="bot",
            description=DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    parser.add_argument(
        "--version", action=_ShowVersion, help="print the version and the schema revision it needs"
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
    run.set_defaults(handler=Lazy("bot.start:run"))

    chat = commands.add_parser(
        "chat",
        help="chat with the bot on this terminal (or from piped input)",
        description="Read messages line by line from standard input and print each reply. "
        "Interactive on a terminal; with piped input, one reply per line, exit 0 at the end. "
        "Example: printf 'hello\\n/model\\n' | bot chat --user alice",
    )
    chat.add_argument("--user", default=None, help="who is chatting (default: your login)")
    _no_migrate_option(chat)
    chat.set_defaults(handler=Lazy("bot.start:chat"))

    migrate = commands.add_parser(
        "migrate",
        help="apply pending database migrations and exit",
        description="Bring the Postgres schema to the newest Alembic revision, under an "
        "advisory lock so that several workers starting at once do not race.",
    )
    migrate.set_defaults(handler=Lazy("bot.start:migrate"))
    register_ops(commands)
    register_bench(commands)
    return parser


class _ShowVersion(argparse.Action):
    """`bot --version`; the schema revision read only when asked (it reads alembic/)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
        try:
            version = metadata.version("chatbot-backend")
        except metadata.PackageNotFoundError:  # run from a checkout that was never installed
            version = "(not installed)"
        revision = Lazy("bot.store.migrate:head_revision")()
        print(f"bot {version} (database schema revision {revision})")
        parser.exit()


def _no_migrate_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not migrate at start, only check the schema is current (as MIGRATE_ON_START="
        "false does): for a database role that may not change the schema",
    )


def _channel_names(text: str) -> tuple[str, ...]:
    try:
        return parse_names(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None  # argparse: usage error, exit 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bot.serve import execute  # what commands need: imported once one runs

    return execute(args)
