"""Figures from samples, Redis memory of cached sessions, targets, and the printed table."""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import Redis

from bot.bench.driver import BenchUser, Sample
from bot.bench.probes import PG_KINDS, PING, PREPARE
from bot.cache.keys import Keys
from bot.tallies import CacheRead

# The targets of issue 7, checked on every run where they apply.
MAX_WARM_REDIS_ROUND_TRIPS = 2
MIN_BASELINE_RATIO = 0.8
MIN_INBOX_RATIO = 0.8  # issue 20: the inbox's write costs at most a fifth of throughput
MAX_P99_MS = 25.0
MAX_SESSION_BYTES = 8 * 1024


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 when there are none)."""
    if not ordered:
        return 0.0
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summarize(sample: Sample) -> dict[str, Any]:
    n = max(sample.messages, 1)
    ordered = sorted(sample.latencies)
    pg = {kind: sample.postgres[kind] / n for kind in PG_KINDS}
    hits = {}
    for read in CacheRead:
        hit, miss = sample.stats[read.tally(True)], sample.stats[read.tally(False)]
        if hit + miss:
            hits[read.value] = hit / (hit + miss)
    return {
        "messages": sample.messages,
        "seconds": round(sample.seconds, 3),
        "messages_per_second": sample.messages / sample.seconds if sample.seconds else 0.0,
        "messages_per_second_by_round": [round(t, 1) for t in sample.throughputs],
        "client_cpu_ms_per_message": sample.cpu_seconds * 1000 / n,
        "latency_ms": {
            name: percentile(ordered, q) * 1000
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
        },
        "postgres_per_message": {
            **pg,
            "round_trips": sum(pg.values()),
            "connections_opened": sample.postgres["connections"],
        },
        "redis_per_message": {
            "round_trips": sample.redis["round_trips"] / n,
            "sends": sample.redis["sends"] / n,  # more than round trips only on a cluster
            "calls": sample.redis["calls"] / n,
            "commands": sum(sample.redis_commands.values()) / n,
        },
        "redis_commands_by_name": {
            name: round(count / n, 3) for name, count in sample.redis_commands.most_common()
        },
        "hit_ratio": hits,
        "replies": dict(sample.replies),
    }


async def session_memory(
    redis: Redis, keys: Keys, channel: str, users: list[BenchUser], limit: int = 500
) -> dict[str, Any]:
    """MEMORY USAGE (all samples) of each user's session hash plus its context list."""
    totals: list[int] = []
    sessions: list[int] = []
    lengths: list[int] = []
    for user in users[:limit]:
        if user.conversation_id is None:
            continue
        session_key = keys.session(channel, user.channel_user_id)
        session = await redis.memory_usage(session_key, samples=0)
        context_key = keys.context_of(session_key, user.conversation_id)
        context = await redis.memory_usage(context_key, samples=0)
        if session is None or context is None:
            continue
        sessions.append(session)
        totals.append(session + context)
        lengths.append(await redis.llen(context_key))
    if not totals:
        return {"sessions_measured": 0}
    return {
        "sessions_measured": len(totals),
        "session_bytes": sum(sessions) / len(sessions),
        "context_bytes": (sum(totals) - sum(sessions)) / len(totals),
        "context_messages": sum(lengths) / len(lengths),
        "full_context_messages": keys.context_messages,
        "bytes_per_session": sum(totals) / len(totals),
        "max_bytes_per_session": max(totals),
    }


def targets(report: dict[str, Any]) -> dict[str, bool]:
    """Which targets this run met (only those this run can check)."""
    warm = report["service"]["warm"]
    met = {
        "warm_zero_postgres_reads": warm["postgres_per_message"]["read"] == 0,
        # Two per message, plus the delivery marks' own call when no FINISH followed
        # within 50 ms: about once per phase, at its end (bot/cache/delivery.py).
        "warm_redis_round_trips_at_most_2": (
            round(warm["redis_per_message"]["round_trips"], 2) <= MAX_WARM_REDIS_ROUND_TRIPS
        ),
        "warm_p99_under_25_ms": warm["latency_ms"]["p99"] < MAX_P99_MS,
    }
    for mode, phases in report.get("groups", {}).items():
        group_warm = phases["warm"]
        met[f"{mode}_warm_zero_postgres_reads"] = group_warm["postgres_per_message"]["read"] == 0
        met[f"{mode}_warm_redis_round_trips_at_most_2"] = (
            round(group_warm["redis_per_message"]["round_trips"], 2) <= MAX_WARM_REDIS_ROUND_TRIPS
        )
    cold = report["service"]["cold"]["latency_ms"]["p99"]
    met["cold_p99_at_most_2x_warm"] = cold <= 2 * warm["latency_ms"]["p99"]
    if report.get("baseline_ratio") is not None:
        met["throughput_at_least_0.8x_baseline"] = report["baseline_ratio"] >= MIN_BASELINE_RATIO
    if report.get("inbox"):
        met["inbox_throughput_at_least_0.8x_without"] = (
            report["inbox"]["ratio_to_without"] >= MIN_INBOX_RATIO
        )
    memory = report["memory"]
    if memory.get("sessions_measured"):
        met["session_with_context_under_8_kb"] = memory["max_bytes_per_session"] < MAX_SESSION_BYTES
    return met


_HEADER = "", "msgs", "msg/s", "CPU ms", "p50 ms", "p95 ms", "p99 ms", "PG reads", "PG writes"
_HEADER2 = "PG other", "Redis RT", "calls", "commands"
_ROW = "{:<15}{:>8}{:>9}{:>8}{:>8}{:>8}{:>8}{:>10}{:>10}{:>10}{:>10}{:>8}{:>9}"


def _row(name: str, phase: dict[str, Any]) -> str:
    lat, pg, rd = phase["latency_ms"], phase["postgres_per_message"], phase["redis_per_message"]
    other = pg["control"] + pg[PING] + pg[PREPARE]
    return _ROW.format(
        name,
        phase["messages"],
        f"{phase['messages_per_second']:.0f}",
        f"{phase['client_cpu_ms_per_message']:.2f}",
        f"{lat['p50']:.1f}",
        f"{lat['p95']:.1f}",
        f"{lat['p99']:.1f}",
        f"{pg['read']:.2f}",
        f"{pg['write']:.2f}",
        f"{other:.2f}",
        f"{rd['round_trips']:.2f}",
        f"{rd['calls']:.2f}",
        f"{rd['commands']:.1f}",
    )


def _comparisons(report: dict[str, Any]) -> list[str]:
    """The lines comparing the service with what ran beside it in the same run."""
    found: list[str] = []
    config = report["config"]
    if report.get("baseline_ratio") is not None:
        by_round = ", ".join(f"{r:.2f}" for r in report["baseline_ratio_by_round"])
        cpu = report["service"]["warm"]["client_cpu_ms_per_message"] / max(
            report["baseline"]["client_cpu_ms_per_message"], 1e-9
        )
        found.append(
            f"throughput service/baseline: {report['baseline_ratio']:.2f} median of rounds "
            f"({by_round}); {report['baseline_ratio_overall']:.2f} overall; "
            f"client CPU per message service/baseline: {cpu:.2f}"
        )
    if report.get("empty_database"):
        empty = report["empty_database"]
        found.append(
            f"warm before the history was stored (same run): "
            f"{empty['warm']['messages_per_second']:.0f} msg/s, p99 "
            f"{empty['warm']['latency_ms']['p99']:.1f} ms; with {config['history']} stored "
            f"messages: {empty['ratio_with_history']:.2f} of that"
        )
    if report.get("inbox"):
        inbox = report["inbox"]
        by_round = ", ".join(f"{r:.2f}" for r in inbox["ratio_by_round"])
        with_pg = report["service"]["warm"]["postgres_per_message"]
        without_pg = inbox["warm_without"]["postgres_per_message"]
        found.append(
            f"throughput with the inbox/without, warm: {inbox['ratio_to_without']:.2f} median "
            f"of rounds ({by_round}); Postgres round trips per message "
            f"{with_pg['round_trips']:.2f} with, {without_pg['round_trips']:.2f} without"
        )
    if report.get("pgbouncer"):
        pooled = report["pgbouncer"]
        by_round = ", ".join(f"{r:.2f}" for r in pooled["ratio_by_round"])
        found.append(
            f"throughput through PgBouncer (transaction mode)/direct, warm: "
            f"{pooled['ratio_to_direct']:.2f} median of rounds ({by_round})"
        )
    return found


def render(report: dict[str, Any]) -> str:
    """The report as the table `bot bench` prints."""
    config = report["config"]
    lines = [
        f"bot bench: {config['users']} users x {config['messages']} messages, concurrency "
        f"{config['concurrency']}, {config['rounds']} rounds, {config['history']} stored "
        f"messages, {config['loop']} loop (Postgres {config['postgres']}, Redis {config['redis']})",
        "",
        _ROW.format(*_HEADER, *_HEADER2),
    ]
    phases = [(f"service {k}", v) for k, v in report["service"].items()]
    for mode, group in report.get("groups", {}).items():
        phases += [(f"{mode} {k}", v) for k, v in group.items()]
    if report.get("empty_database"):
        phases.append(("empty db warm", report["empty_database"]["warm"]))
    if report.get("inbox"):
        phases.append(("no inbox warm", report["inbox"]["warm_without"]))
    if report.get("pgbouncer"):
        phases.append(("pgbouncer warm", report["pgbouncer"]["warm"]))
    if report.get("baseline"):
        phases.append(("baseline", report["baseline"]))
    lines += [_row(name, phase) for name, phase in phases]
    lines.append(
        "  (CPU ms: this process per message; Postgres and Redis columns: per message; "
        "PG other: BEGIN/COMMIT/ROLLBACK, pre-ping, PREPARE)"
    )
    if config.get("redis_cluster"):
        sends = report["service"]["warm"]["redis_per_message"]["sends"]
        lines.append(
            f"  (Redis Cluster: Redis RT counts the waits; a pipeline goes to every node it "
            f"needs at once, {sends:.2f} sends per warm message)"
        )
    for kind, phase in report["service"].items():
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in phase["hit_ratio"].items())
        lines.append(f"cache hit ratio, {kind}: {ratios or 'n/a'}")
    lines += _comparisons(report)
    memory = report["memory"]
    if memory.get("sessions_measured"):
        lines.append(
            f"Redis per cached session: {memory['bytes_per_session']:.0f} B "
            f"(session {memory['session_bytes']:.0f} B + context of "
            f"{memory['context_messages']:.1f}/{memory['full_context_messages']} messages "
            f"{memory['context_bytes']:.0f} B; max {memory['max_bytes_per_session']} B) over "
            f"{memory['sessions_measured']} sessions"
        )
    lines.append(
        "targets: "
        + ", ".join(f"{name} {'ok' if ok else 'MISSED'}" for name, ok in report["targets"].items())
    )
    return "\n".join(lines)


_STREAM_HEADER = (
    "", "replies", "shown p50", "p99", "LLM p50", "overhead p50", "p99", "max", "updates",
    "429s", "PG tx", "PG writes", "Redis RT",
)  # fmt: skip
_STREAM_ROW = "{:<10}{:>8}{:>11}{:>8}{:>9}{:>14}{:>8}{:>8}{:>9}{:>6}{:>7}{:>11}{:>10}"


def _stream_row(name: str, found: dict[str, Any]) -> str:
    shown, llm = found["first_visible_ms"], found["llm_first_token_ms"]
    overhead, pg = found["overhead_ms"], found["postgres_per_message"]
    cells = [
        name, found["replies"], f"{shown['p50']:.0f}", f"{shown['p99']:.0f}", f"{llm['p50']:.0f}",
        f"{overhead['p50']:.1f}", f"{overhead['p99']:.1f}", f"{overhead['max']:.1f}",
        f"{found['updates_per_reply']['mean']:.1f}", found["platform_429s"],
        f"{pg['transactions']:.2f}", f"{pg['writes']:.2f}",
        f"{found['redis_round_trips_per_message']:.2f}",
    ]  # fmt: skip
    return _STREAM_ROW.format(*cells)


def render_streaming(report: dict[str, Any]) -> str:
    """The report of `bot bench --streaming` as a table, times in milliseconds."""
    config = report["config"]
    lines = [
        f"bot bench --streaming: {config['concurrency']} conversations x "
        f"{config['replies_per_conversation']} replies of {config['reply_words']} tokens, "
        f"LLM first token {config['first_token_seconds'] * 1000:.0f} ms then "
        f"{config['tokens_per_second']:g} tokens/s",
        "",
        _STREAM_ROW.format(*_STREAM_HEADER),
    ]
    lines += [_stream_row(name, found) for name, found in report["platforms"].items()]
    lines.append(
        "  (shown: event to the first text the platform was asked to show; overhead: shown "
        "less the LLM's own first-token time; per message: updates, Postgres, Redis)"
    )
    for name, found in report["platforms"].items():
        met = ", ".join(f"{k} {'ok' if ok else 'MISSED'}" for k, ok in found["targets"].items())
        lines.append(f"targets, {name}: {met}")
    return "\n".join(lines)
