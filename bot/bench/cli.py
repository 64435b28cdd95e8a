"""`bot bench`: the command line of the benchmark (bot/bench/command.py runs it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bot.bench.options import PLATFORM_NAMES, BenchOptions, StreamingOptions
from bot.lazy import Lazy

DESCRIPTION = """\
Drive simulated users through the real conversation service (echo responder) against
the configured Postgres and Redis (embedded ones when none is configured), and beside
it a minimal hand-written asyncpg + redis-py loop doing the same storage work.

It reports, for a cold phase (empty cache) and a warm phase: messages/s, latency
p50/p95/p99, Postgres statements per message (reads, writes, other round trips),
Redis round trips, calls and server-side commands per message, cache hit ratios,
and Redis bytes per cached session with its context; and the service/baseline
throughput ratio. It uses a fresh database bot_bench_<random> and the key prefix
bench:<random>:, and removes both at the end. See docs/benchmarks.md.

With --streaming it measures streamed replies instead: the real Telegram, Discord and
Slack adapters against local emulators of each platform (enforcing its rate limits)
and a local LLM that streams at a set time to first token and rate. Per platform:
time from the event to the first text shown (p50/p99), the LLM's own first-token
time, the bot's overhead (the difference), updates per reply, 429s, and Postgres and
Redis round trips per message."""


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return number


def _platforms(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in PLATFORM_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(PLATFORM_NAMES)}")
    return names


def _count(value: str) -> int:
    number = int(value.replace("_", "").replace(",", ""))
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def register(subparsers: Any) -> None:
    """Add the `bench` command to the `bot` parser's subcommands."""
    defaults = BenchOptions()
    bench = subparsers.add_parser(
        "bench",
        help="measure the hot path against a hand-written baseline",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = bench.add_argument
    add("--users", type=_positive, default=defaults.users, help="simulated users (%(default)s)")
    add(
        "--messages",
        type=_positive,
        default=defaults.messages,
        help="warm messages per user and round, after one cold message (%(default)s)",
    )
    add(
        "--concurrency",
        type=_positive,
        default=defaults.concurrency,
        help="messages in flight, each from another user (%(default)s)",
    )
    add(
        "--history",
        type=_count,
        default=defaults.history,
        help="messages stored in the tables before the run, e.g. 1000000 (%(default)s)",
    )
    add(
        "--rounds",
        type=_positive,
        default=defaults.rounds,
        help="service/baseline alternations (%(default)s)",
    )
    add("--no-baseline", action="store_true", help="skip the baseline")
    add(
        "--loop",
        choices=("asyncio", "uvloop"),
        default=defaults.loop,
        help="event loop; uvloop must be installed (%(default)s)",
    )
    add("--profile", type=Path, help="write a pyinstrument profile of the warm phases here")
    streaming = StreamingOptions()
    add("--streaming", action="store_true", help="measure streamed replies per platform instead")
    add(
        "--platforms",
        type=_platforms,
        default=streaming.platforms,
        help="--streaming: platforms to measure, comma-separated (%(default)s)",
    )
    add(
        "--replies",
        type=_positive,
        default=streaming.replies,
        help="--streaming: messages per conversation, each after the last reply (%(default)s)",
    )
    add(
        "--first-token",
        type=_seconds,
        default=streaming.first_token_seconds,
        help="--streaming: the LLM's seconds to its first token (%(default)s)",
    )
    add(
        "--tokens-per-second",
        type=_seconds,
        default=streaming.tokens_per_second,
        help="--streaming: the LLM's rate after the first token (%(default)s)",
    )
    add(
        "--reply-words",
        type=_positive,
        default=streaming.reply_words,
        help="--streaming: words (tokens) in each reply (%(default)s)",
    )
    add(
        "--think",
        type=float,
        default=streaming.think_seconds,
        help="--streaming: seconds a user reads a reply before writing again (%(default)s)",
    )
    add(
        "--redis-cluster",
        action="store_true",
        help="REDIS_URL names a node of a Redis Cluster: run on it (as REDIS_CLUSTER=true)",
    )
    add(
        "--pgbouncer",
        action="store_true",
        help="also run the service through a local PgBouncer in transaction mode (the "
        "pgbouncer package) in each round, and compare it with the direct connection",
    )
    add("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(handler=Lazy("bot.bench.command:bench"))
