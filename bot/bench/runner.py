"""One bench run: its own database and key prefix, the rounds, the report, the clean-up.

Each round runs the service (a cold phase on an emptied cache, then a warm phase)
and the baseline on the same servers at the same concurrency; the order flips every
round, so machine noise and the growth of the tables hit both alike.
"""

from __future__ import annotations

import importlib
import logging
import statistics
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import text

from bot.bench.baseline import Baseline
from bot.bench.driver import BenchUser, Meter, Sample, ServiceDriver
from bot.bench.options import BenchOptions
from bot.bench.pooled import pooled_driver
from bot.bench.probes import PgProbe, RedisProbe
from bot.bench.report import session_memory, summarize, targets
from bot.bench.setup import bench_servers, delete_keys, history_partitions, insert_history
from bot.config import Settings
from bot.domain import ChatKind
from bot.errors import ConfigError
from bot.experiments import RunningExperiments
from bot.experimentset import GLOBAL, Variant
from bot.responders.echo import EchoResponder
from bot.runtime import build_service
from bot.service import ConversationService
from bot.store.engine import create_engine
from bot.stores import create_redis, keys_for

log = logging.getLogger(__name__)

CHANNEL = "bench"
GROUP_MEMBERS = 5  # people per group chat (and per shared thread) of the group traffic
NO_RATE_LIMIT = 1_000_000_000  # simulated users send far faster than people
# Quotas are on, far above what the bench spends: their counters are read and written on
# the warm path like any deployment's (bot/quotas.py).
BENCH_QUOTA_TOKENS = 10**12
BENCH_EXPERIMENT = "bench-models"
QUOTAS_ON = {
    f"quota_{holder}_{period}_tokens": BENCH_QUOTA_TOKENS
    for holder in ("user", "chat")
    for period in ("day", "month")
}


@dataclass(slots=True)
class _Totals:
    cold: Sample
    warm: Sample
    baseline: Sample
    ratios: list[float]
    pooled: Sample = field(default_factory=lambda: Sample("warm"))
    pooled_ratios: list[float] = field(default_factory=list)
    no_inbox: Sample = field(default_factory=lambda: Sample("warm"))
    inbox_ratios: list[float] = field(default_factory=list)  # with the inbox / without


async def run_bench(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """Run the bench on the configured (or embedded) servers; returns the report."""
    async with bench_servers(settings) as servers:
        settings = settings.model_copy(
            update={
                "database_url": SecretStr(servers.database_url),
                "redis_url": SecretStr(servers.redis_url),
                "redis_key_prefix": f"{servers.prefix}svc:",
                "rate_limit_per_minute": NO_RATE_LIMIT,
                **QUOTAS_ON,
            }
        )
        report = await _run(settings, options, servers.control, servers.prefix)
        report["config"].update(
            database=servers.database,
            key_prefix=servers.prefix,
            redis_cluster=settings.redis_cluster,
            quotas="on, every limit far above the traffic",
            experiment=f"{BENCH_EXPERIMENT} (global, two variants)",
        )
        return report


async def _run(
    settings: Settings, options: BenchOptions, control: Redis, prefix: str
) -> dict[str, Any]:
    assert settings.database_url is not None and settings.redis_url is not None
    url, redis_url = settings.database_url.get_secret_value(), settings.redis_url.get_secret_value()
    profiler = _profiler(options.profile)
    engine = create_engine(settings, url)
    redis = create_redis(settings, redis_url)
    base_redis = create_redis(settings, redis_url)
    pg, rd, base_pg, base_rd = PgProbe(), RedisProbe(), PgProbe(), RedisProbe()
    pg.attach(engine)
    rd.attach(redis)
    base_rd.attach(base_redis)
    service = build_service(settings, engine, redis, EchoResponder())
    stack = AsyncExitStack()
    users = [BenchUser(f"user-{i:05d}") for i in range(options.users)]
    driver = ServiceDriver(service, users, CHANNEL, Meter(pg, rd, control, service.stats))
    # The baseline names its keys as on one Redis: it sends each in a command of its own,
    # which a cluster's pipeline routes to its node.
    plain = {"redis_key_prefix": f"{prefix}base:", "redis_cluster": False}
    base_keys = keys_for(settings.model_copy(update=plain))
    baseline = Baseline(url, base_redis, base_keys, CHANNEL, base_pg, settings.default_model)
    try:
        if options.baseline:
            names = [f"base-{i:05d}" for i in range(options.users)]
            await baseline.open(min(options.concurrency, options.users), names)
        base_meter = Meter(base_pg, base_rd, control)
        await _with_experiment(service, settings.default_model)
        await _run_in(options, service, control)
        meter = Meter(pg, rd, control, service.stats)
        empty = await _before_history(settings, options, url, control, service, meter)
        pooled = await _pooled(stack, settings, options, url, control, f"{prefix}pgb:")
        totals = await _rounds(options, control, driver, baseline, base_meter, profiler, pooled)
        memory = await session_memory(control, service.cache.keys, CHANNEL, users)
        groups = await _groups(options, control, service, Meter(pg, rd, control, service.stats))
        report = {
            "config": await _config(options, engine, control),
            "service": {"cold": summarize(totals.cold), "warm": summarize(totals.warm)},
            "groups": groups,
            "baseline": summarize(totals.baseline) if options.baseline else None,
            "baseline_ratio": statistics.median(totals.ratios) if totals.ratios else None,
            "baseline_ratio_overall": _ratio(totals),
            "baseline_ratio_by_round": totals.ratios,
            "memory": memory,
        }
        if empty is not None:
            before, after = summarize(empty), summarize(totals.warm)
            report["empty_database"] = {
                "warm": before,
                "ratio_with_history": after["messages_per_second"]
                / max(before["messages_per_second"], 1e-9),
            }
        report["inbox"] = {
            "warm_without": summarize(totals.no_inbox),
            "ratio_to_without": statistics.median(totals.inbox_ratios),
            "ratio_by_round": totals.inbox_ratios,
        }
        if pooled is not None:
            report["pgbouncer"] = {
                "warm": summarize(totals.pooled),
                "ratio_to_direct": statistics.median(totals.pooled_ratios),
                "ratio_by_round": totals.pooled_ratios,
            }
        # Users per variant: the experiment ran over the measured traffic.
        report["experiment"] = await service.store.experiments.assigned(BENCH_EXPERIMENT)
        report["targets"] = targets(report)
        if profiler is not None and options.profile is not None:
            _write_profile(profiler, options.profile)
        return report
    finally:
        await stack.aclose()
        await baseline.close()
        await redis.aclose()
        await base_redis.aclose()
        await engine.dispose()


async def _with_experiment(service: ConversationService, model: str) -> None:
    """An A/B experiment runs over all the traffic, as in a deployment testing a model:
    each reply resolves its writer's variant and records it (bot/experiments.py)."""
    variants = (Variant("a", model, 50), Variant("b", f"{model}-b", 50))
    await service.store.experiments.create(BENCH_EXPERIMENT, variants, GLOBAL)
    if isinstance(service.experiments, RunningExperiments):
        await service.experiments.load()


async def _rounds(
    options: BenchOptions,
    control: Redis,
    driver: ServiceDriver,
    baseline: Baseline,
    baseline_meter: Meter,
    profiler: Any,
    pooled: ServiceDriver | None,
) -> _Totals:
    totals = _Totals(Sample("cold"), Sample("warm"), Sample("baseline"), [])
    c, m = options.concurrency, options.messages
    for round_no in range(options.rounds):
        service_first = round_no % 2 == 0
        if options.baseline and not service_first:
            totals.baseline.add(base := await baseline.run(round_no, m, c, baseline_meter))
        await delete_keys(control, driver.service.cache.keys.prefix)  # the cold phase's empty cache
        totals.cold.add(await driver.cold(round_no, c))
        plain = ServiceDriver(driver.service, driver.users, CHANNEL, driver.meter, inbox=False)
        if not service_first:
            totals.no_inbox.add(without := await plain.warm(round_no, m, c))
        if profiler is not None:
            profiler.start()
        totals.warm.add(warm := await driver.warm(round_no, m, c))
        if profiler is not None:
            profiler.stop()
        if service_first:
            totals.no_inbox.add(without := await plain.warm(round_no, m, c))
        totals.inbox_ratios.append(round(warm.throughputs[0] / without.throughputs[0], 3))
        if pooled is not None:
            totals.pooled.add(through := await _pooled_round(pooled, control, round_no, m, c))
            totals.pooled_ratios.append(round(through.throughputs[0] / warm.throughputs[0], 3))
        if options.baseline and service_first:
            totals.baseline.add(base := await baseline.run(round_no, m, c, baseline_meter))
        if options.baseline:
            totals.ratios.append(round(warm.throughputs[0] / base.throughputs[0], 3))
        log.info("round %d of %d done", round_no + 1, options.rounds)
    return totals


async def _before_history(
    settings: Settings,
    options: BenchOptions,
    url: str,
    control: Redis,
    service: Any,
    meter: Meter,
) -> Sample | None:
    """With --history: a warm phase of users of their own on the tables as they are
    (empty), then the history stored; the rounds then run beside it. Both in one run,
    so the effect of the history is not the machine's mood between two runs."""
    if not options.history:
        return None
    users = [BenchUser(f"empty-{i:05d}") for i in range(options.users)]
    driver = ServiceDriver(service, users, CHANNEL, meter)
    await driver.cold(0, options.concurrency)
    before = await driver.warm(0, options.messages, options.concurrency)
    log.info("storing %d messages of history", options.history)
    await history_partitions(settings, url)
    await insert_history(url, options.history)
    return before


async def _pooled(
    stack: AsyncExitStack,
    settings: Settings,
    options: BenchOptions,
    url: str,
    control: Redis,
    prefix: str,
) -> ServiceDriver | None:
    """With --pgbouncer: the driver of a service behind PgBouncer, run in like the other."""
    if not options.pgbouncer:
        return None
    driver = await stack.enter_async_context(
        pooled_driver(settings, url, control, prefix, options.users, CHANNEL)
    )
    await _run_in(options, driver.service, control)
    return driver


async def _pooled_round(
    driver: ServiceDriver, control: Redis, round_no: int, messages: int, concurrency: int
) -> Sample:
    """A cold phase, unmeasured but for filling the cache, then the measured warm one."""
    await delete_keys(control, driver.service.cache.keys.prefix)
    await driver.cold(round_no, concurrency)
    return await driver.warm(round_no, messages, concurrency)


async def _groups(
    options: BenchOptions, control: Redis, service: Any, meter: Meter
) -> dict[str, dict[str, Any]]:
    """Group traffic: as many users again, in group chats of GROUP_MEMBERS where each
    talks for themselves (`per_user`), and in threads of them all talk together
    (`shared`); a cold and a warm phase of each."""
    found: dict[str, dict[str, Any]] = {}
    for mode, kind in (("per_user", ChatKind.GROUP), ("shared", ChatKind.THREAD)):
        users = [_member(mode, kind, i) for i in range(options.users)]
        if mode == "shared":
            for chat in sorted({u.chat_id for u in users if u.chat_id}):
                patch = {"conversation_mode": "shared"}
                await service.store.chat_configs.update(CHANNEL, chat, "", patch, [])
        driver = ServiceDriver(service, users, CHANNEL, meter)
        await delete_keys(control, service.cache.keys.prefix)
        cold = await driver.cold(0, options.concurrency)
        warm = await driver.warm(0, options.messages, options.concurrency)
        found[mode] = {"cold": summarize(cold), "warm": summarize(warm)}
        log.info("group traffic (%s) done", mode)
    return found


async def _run_in(options: BenchOptions, service: Any, control: Redis) -> None:
    """Users of their own talk first, unmeasured, so that the phases meet a worker as it
    is after a while (each pooled connection opened, its statements prepared, the
    server's caches of the tables loaded): the cold phase measures a user's first
    message in an hour, not a worker's first minute."""
    users = [BenchUser(f"run-in-{i:05d}") for i in range(2 * options.concurrency)]
    meter = Meter(PgProbe(), RedisProbe(), control)
    await ServiceDriver(service, users, CHANNEL, meter).unmeasured(3, options.concurrency)


def _member(mode: str, kind: ChatKind, index: int) -> BenchUser:
    chat = f"{mode}-chat-{index // GROUP_MEMBERS:04d}"
    thread = "1" if kind is ChatKind.THREAD else None
    return BenchUser(f"{mode}-{index:05d}", kind=kind, chat_id=chat, thread_id=thread)


def _ratio(totals: _Totals) -> float | None:
    warm, base = totals.warm, totals.baseline
    if not base.seconds or not warm.seconds:
        return None
    return (warm.messages / warm.seconds) / (base.messages / base.seconds)


async def _config(options: BenchOptions, engine: Any, control: Redis) -> dict[str, Any]:
    async with engine.connect() as connection:
        postgres = (await connection.execute(text("SHOW server_version"))).scalar_one()
    redis_info = await control.info("server")
    return {
        "users": options.users,
        "messages": options.messages,
        "concurrency": options.concurrency,
        "effective_concurrency": min(options.concurrency, options.users),
        "history": options.history,
        "rounds": options.rounds,
        "loop": options.loop,
        "profiled": options.profile is not None,
        "postgres": str(postgres).split()[0],
        "redis": redis_info.get("redis_version", "?"),
    }


def _profiler(path: Path | None) -> Any:
    """A pyinstrument profiler when asked for (an optional tool, not a dependency)."""
    if path is None:
        return None
    try:
        module = importlib.import_module("pyinstrument")
    except ImportError:
        raise ConfigError("--profile needs pyinstrument: pip install pyinstrument") from None
    return module.Profiler(async_mode="disabled")


def _write_profile(profiler: Any, path: Path) -> None:
    html = path.suffix in {".html", ".htm"}
    path.write_text(profiler.output_html() if html else profiler.output_text(unicode=True))
    log.info("profile of the warm phases written to %s", path)
