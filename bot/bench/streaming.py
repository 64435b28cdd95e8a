"""`bot bench --streaming`: streamed replies through each platform's emulator.

A local LLM (bot/emulators/llm_api.py) answers every message with `reply_words`
words, the first after `first_token_seconds`, then `tokens_per_second`. For each
platform the real adapter runs on the real service against the platform's emulator,
which enforces the platform's rate limits (bot/bench/platforms.py); `concurrency`
conversations each write `replies` messages, each once the last reply was delivered
whole and `think_seconds` passed. Per platform it reports the time from sending the
event to the first text the platform was asked to show, the LLM's own time to its
first token for that request, their difference (the bot's overhead), updates per
reply, the 429s the platform answered, and Postgres and Redis round trips per
message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from bot.bench.options import StreamingOptions
from bot.bench.platforms import PLATFORMS, Platform
from bot.bench.probes import COMMITS, READ, WRITE, PgProbe, RedisProbe
from bot.bench.report import percentile
from bot.bench.setup import bench_servers
from bot.cache.streams import StreamLedger
from bot.channels import registry
from bot.channels.base import ChannelAdapter
from bot.channels.dispatch import Dispatcher
from bot.config import Settings
from bot.domain import IncomingMessage, PostRef, Reply
from bot.emulators.llm_api import LLMServer, Step
from bot.errors import BenchError
from bot.metrics import Metrics
from bot.runtime import build_service
from bot.store.engine import create_engine
from bot.stores import create_redis, keys_for

log = logging.getLogger(__name__)

REPLY_TIMEOUT_SECONDS = 60.0  # one reply, 429 waits included
CONNECT_TIMEOUT_SECONDS = 30.0
OVERHEAD_P99_TARGET_MS = 150.0


@dataclass(frozen=True, slots=True)
class _Exchange:
    text: str
    sent: float  # time.monotonic() the event went to the adapter
    writes: list[float]  # the bot's writes in the conversation until delivered


class _Deliveries(Dispatcher):
    """The real dispatcher, telling the bench when an adapter delivered a reply whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: dict[str, asyncio.Future[None]] = {}

    def expect(self, text: str) -> asyncio.Future[None]:
        future = self._waiting[text] = asyncio.get_running_loop().create_future()
        return future

    def delivered(
        self, message: IncomingMessage, reply: Reply, posts: Sequence[PostRef] = ()
    ) -> None:
        super().delivered(message, reply, posts)
        future = self._waiting.pop(message.text, None)
        if future is not None and not future.done():
            future.set_result(None)


async def run_streaming_bench(settings: Settings, options: StreamingOptions) -> dict[str, Any]:
    """Run the streaming bench on the configured (or embedded) servers; the report."""
    llm = LLMServer()
    llm.default = Step(
        text=" ".join(f"word{i}" for i in range(options.reply_words)),
        first_token_delay=options.first_token_seconds,
        piece_delay=1 / options.tokens_per_second,
    )
    async with bench_servers(settings) as servers:
        await llm.start()
        try:
            base = settings.model_copy(
                update={
                    "database_url": SecretStr(servers.database_url),
                    "redis_url": SecretStr(servers.redis_url),
                    "llm_base_url": llm.url,
                    "llm_api_key": SecretStr("bench"),
                    "rate_limit_per_minute": 1_000_000_000,
                    "stream_replies": True,
                    # Every conversation's call at once: the LLM's queue is not the bot's.
                    "llm_max_concurrency": max(settings.llm_max_concurrency, options.concurrency),
                }
            )
            platforms: dict[str, Any] = {}
            for name in options.platforms:
                keyed = base.model_copy(update={"redis_key_prefix": f"{servers.prefix}{name}:"})
                platforms[name] = await _bench_platform(PLATFORMS[name](), keyed, options, llm)
                log.info("streaming through %s done", name)
            config = {
                **_config(options),
                "database": servers.database,
                "key_prefix": servers.prefix,
            }
            return {"config": config, "platforms": platforms}
        finally:
            await llm.stop()


async def _bench_platform(
    platform: Platform, settings: Settings, options: StreamingOptions, llm: LLMServer
) -> dict[str, Any]:
    await platform.start()
    settings = settings.model_copy(update=platform.settings())
    assert settings.database_url is not None and settings.redis_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value())
    redis = create_redis(settings, settings.redis_url.get_secret_value())
    pg, rd = PgProbe(), RedisProbe()
    pg.attach(engine)
    rd.attach(redis)
    metrics = Metrics()
    service = build_service(settings, engine, redis, metrics=metrics)
    streams = StreamLedger(redis, keys_for(settings), settings.stream_orphan_seconds)
    dispatcher = _Deliveries(service, metrics, streams)
    [spec] = registry.select(settings, [platform.name])
    adapter = registry.build(spec, settings, dispatcher)
    running = asyncio.create_task(adapter.run())
    try:
        await _connected(adapter, running)
        await _conversations(platform, dispatcher, options, "run-in", 1)  # connections, caches
        pg_before, rd_before, limited = pg.snapshot(), rd.snapshot(), platform.limited()
        exchanges = await _conversations(platform, dispatcher, options, "measured", options.replies)
        postgres, redis_calls = pg.snapshot() - pg_before, rd.snapshot() - rd_before
        if problems := platform.violations():
            raise BenchError(f"{platform.name}: the SDK sent what the spec refuses: {problems[:3]}")
        summary = _summary(exchanges, _first_tokens(llm), postgres, redis_calls)
        summary["platform_429s"] = platform.limited() - limited
        summary["targets"] = {
            "overhead_p99_under_150_ms": summary["overhead_ms"]["p99"] < OVERHEAD_P99_TARGET_MS,
            "no_429s": summary["platform_429s"] == 0,
        }
        return summary
    finally:
        await adapter.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 10)
        await service.responder.aclose()
        await redis.aclose()
        await engine.dispose()
        await platform.stop()


async def _connected(adapter: ChannelAdapter, running: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
    while not adapter.connected:
        if running.done():
            running.result()  # what stopped it
            raise BenchError(f"{adapter.name} stopped before it connected")
        if time.monotonic() > deadline:
            raise BenchError(f"{adapter.name} did not connect to its emulator")
        await asyncio.sleep(0.02)


async def _conversations(
    platform: Platform,
    dispatcher: _Deliveries,
    options: StreamingOptions,
    phase: str,
    replies: int,
) -> list[_Exchange]:
    """`concurrency` conversations at once, each `replies` messages one after another."""

    async def talk(conversation: int) -> list[_Exchange]:
        found = []
        for number in range(replies):
            await asyncio.sleep(options.think_seconds)  # reading the last reply (or phase's)
            text = f"{phase} {conversation}.{number}: how does streaming look from here?"
            found.append(await _exchange(platform, dispatcher, conversation, text))
        return found

    talks = await asyncio.gather(*(talk(c) for c in range(options.concurrency)))
    return [exchange for talk in talks for exchange in talk]


async def _exchange(
    platform: Platform, dispatcher: _Deliveries, conversation: int, text: str
) -> _Exchange:
    delivered = dispatcher.expect(text)
    sent = time.monotonic()
    await platform.send(conversation, text)
    try:
        await asyncio.wait_for(delivered, REPLY_TIMEOUT_SECONDS)
    except TimeoutError:
        seconds = REPLY_TIMEOUT_SECONDS
        raise BenchError(f"{platform.name}: no reply to {text!r} within {seconds:g} s") from None
    writes = platform.writes(conversation, sent)
    if not writes:
        raise BenchError(f"{platform.name}: the reply to {text!r} was never shown")
    return _Exchange(text, sent, writes)


def _first_tokens(llm: LLMServer) -> dict[str, float]:
    """The LLM's own time to the first token, by the text of the message answered (in a
    DM the request's last message is that text, as written)."""
    return {last: first - arrived for last, arrived, first in llm.first_pieces}


def _summary(
    exchanges: list[_Exchange],
    first_tokens: dict[str, float],
    postgres: Any,
    redis_calls: Any,
) -> dict[str, Any]:
    n = max(len(exchanges), 1)
    visible = sorted(min(e.writes) - e.sent for e in exchanges)
    llm = sorted(first_tokens.get(e.text, 0.0) for e in exchanges)
    overhead = sorted(min(e.writes) - e.sent - first_tokens.get(e.text, 0.0) for e in exchanges)
    updates = [len(e.writes) for e in exchanges]
    return {
        "replies": len(exchanges),
        "first_visible_ms": _percentiles(visible),
        "llm_first_token_ms": _percentiles(llm),
        "overhead_ms": _percentiles(overhead),
        "updates_per_reply": {"mean": round(sum(updates) / n, 2), "max": max(updates, default=0)},
        "postgres_per_message": {
            "reads": postgres[READ] / n,
            "writes": postgres[WRITE] / n,
            "transactions": postgres[COMMITS] / n,
        },
        "redis_round_trips_per_message": redis_calls["round_trips"] / n,
    }


def _percentiles(ordered: list[float]) -> dict[str, float]:
    return {
        name: round(percentile(ordered, q) * 1000, 1)
        for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    }


def _config(options: StreamingOptions) -> dict[str, Any]:
    return {
        "platforms": list(options.platforms),
        "concurrency": options.concurrency,
        "replies_per_conversation": options.replies,
        "first_token_seconds": options.first_token_seconds,
        "tokens_per_second": options.tokens_per_second,
        "reply_words": options.reply_words,
        "think_seconds": options.think_seconds,
    }
