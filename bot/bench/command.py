"""`bot bench`, run: the options parsed by bot/bench/cli.py, the run, the report."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json

from bot.bench.options import BenchOptions, StreamingOptions
from bot.bench.report import render, render_streaming
from bot.bench.runner import run_bench
from bot.bench.streaming import run_streaming_bench
from bot.config import Settings
from bot.errors import ConfigError


async def bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.redis_cluster:
        settings = settings.model_copy(update={"redis_cluster": True})
    if args.streaming:
        streamed = StreamingOptions(
            platforms=args.platforms,
            concurrency=args.concurrency,
            replies=args.replies,
            first_token_seconds=args.first_token,
            tokens_per_second=args.tokens_per_second,
            reply_words=args.reply_words,
            think_seconds=max(args.think, 0.0),
        )
        found = await run_streaming_bench(settings, streamed)
        print(json.dumps(found, indent=2) if args.json else render_streaming(found))
        return 0
    options = BenchOptions(
        users=args.users,
        messages=args.messages,
        concurrency=args.concurrency,
        history=args.history,
        rounds=args.rounds,
        baseline=not args.no_baseline,
        loop=args.loop,
        profile=args.profile,
        pgbouncer=args.pgbouncer,
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
