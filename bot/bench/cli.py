"""`bot bench`: the command line of the benchmark."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
from pathlib import Path
from typing import Any

from bot.bench.report import render
from bot.bench.runner import BenchOptions, run_bench
from bot.config import Settings
from bot.errors import ConfigError

DESCRIPTION = """\
Drive simulated users through the real conversation service (echo responder) against
the configured Postgres and Redis (embedded ones when none is configured), and beside
it a minimal hand-written asyncpg + redis-py loop doing the same storage work.

It reports, for a cold phase (empty cache) and a warm phase: messages/s, latency
p50/p95/p99, Postgres statements per message (reads, writes, other round trips),
Redis round trips, calls and server-side commands per message, cache hit ratios,
and Redis bytes per cached session with its context; and the service/baseline
throughput ratio. It uses a fresh database bot_bench_<random> and the key prefix
bench:<random>:, and removes both at the end. See docs/benchmarks.md."""


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


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
    add("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(handler=_bench)


async def _bench(settings: Settings, args: argparse.Namespace) -> int:
    options = BenchOptions(
        users=args.users,
        messages=args.messages,
        concurrency=args.concurrency,
        history=args.history,
        rounds=args.rounds,
        baseline=not args.no_baseline,
        loop=args.loop,
        profile=args.profile,
    )
    if options.loop == "uvloop":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            raise ConfigError("--loop uvloop needs uvloop: pip install uvloop") from None
        # The whole bench on a uvloop loop of its own, in a thread of its own.
        report = await asyncio.to_thread(uvloop.run, run_bench(settings, options))
    else:
        report = await run_bench(settings, options)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
