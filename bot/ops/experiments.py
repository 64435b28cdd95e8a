"""`bot ops experiment create|list|show|stop|report`: A/B model experiments.

Create and stop change Postgres and tell every worker (bot/experiments.py); list and
show read Postgres (show also counts the users recorded in `ab_test:{experiment}`);
report compares the variants from the replies' metadata, read from DATABASE_READ_URL's
replica when there is one: users, replies, tokens and cost (as `bot ops usage`),
latency, errors and feedback with a 95% Wilson interval of the positive share.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from bot.cache.experiments import ExperimentCache
from bot.config import Settings
from bot.errors import CacheUnavailable, NotFound
from bot.experiments import ExperimentChange, create_experiment, stop_experiment
from bot.experimentset import GLOBAL, Experiment, check_experiment, parse_variant
from bot.ops.context import Ops
from bot.ops.handler import warn
from bot.ops.render import Out
from bot.ops.usage import report as usage_report
from bot.pricing import prices_with
from bot.store.experiments import VariantFigures
from bot.store.usage import UsageBy

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def check_create(args: argparse.Namespace, settings: Settings) -> None:
    """Variants parsed and the whole checked before any store is reached."""
    args.variants = [parse_variant(text) for text in args.variant]
    check_experiment(args.name, args.variants, settings.allowed_models)


async def create(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    scope = args.channel or GLOBAL
    change = await create_experiment(
        ops.store.experiments, _cache(ops), args.name, args.variants, scope
    )
    return _changed(ops, out, change, "created")


async def stop(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    change = await stop_experiment(ops.store.experiments, _cache(ops), args.name)
    return _changed(ops, out, change, "stopped")


async def list_(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    found = [_fields(e) for e in await ops.store.experiments.all()]

    def view(out: Out, data: dict[str, Any]) -> None:
        cells = [
            (e["name"], e["scope"], _variants_text(e), e["created_at"], e["stopped_at"])
            for e in data["experiments"]
        ]
        columns = ["name", "scope", "variants", "created", "stopped"]
        out.table("Experiments", columns, cells, "no experiment")

    out.emit({"experiments": found}, view)
    return 0


async def show(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    experiment = await _get(ops, args.name)
    assigned = await ops.store.experiments.assigned(args.name)
    data = _fields(experiment)
    data["assigned"] = {v.name: assigned.get(v.name, 0) for v in experiment.variants}
    try:
        data["recorded_in_redis"] = await _cache(ops).recorded(args.name)
    except CacheUnavailable:
        data["recorded_in_redis"] = None
        warn(out, data, "Redis is unreachable: its ab_test record is not counted")

    def view(out: Out, data: dict[str, Any]) -> None:
        head = {k: v for k, v in data.items() if k not in ("variants", "assigned", "warnings")}
        out.pairs(f"Experiment {args.name}", head)
        cells = [
            (v["name"], v["model"], f"{v['share']}%", data["assigned"][v["name"]])
            for v in data["variants"]
        ]
        out.table("Variants", ["variant", "model", "share", "users assigned"], cells)

    out.emit(data, view)
    return 0


async def report(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    experiment = await _get(ops, args.name, reads=True)
    assert experiment.created_at is not None  # read from its row
    figures = await ops.reads.experiments.figures(experiment)
    usage = await ops.reads.usage.usage(UsageBy.VARIANT, experiment.created_at, experiment.name)
    spent = usage_report(
        usage, prices_with(ops.settings.llm_prices), "variant", experiment.created_at
    )
    costs = {group["key"]: group for group in spent["groups"]}
    models = {v.name: v.model for v in experiment.variants}
    data = _fields(experiment)
    data["variants"] = [
        _variant_report(f, models[f.variant], costs.get(f.variant)) for f in figures
    ]
    data["replica"] = ops.has_replica
    out.emit(data, _report_view)
    return 0


def wilson(positive: int, total: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of the positive share; None without any rating."""
    if total == 0:
        return None
    share = positive / total
    centre = share + z * z / (2 * total)
    spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    scale = 1 + z * z / total
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def _variant_report(
    figures: VariantFigures, model: str, spent: dict[str, Any] | None
) -> dict[str, Any]:
    rated = figures.positive + figures.negative
    interval = wilson(figures.positive, rated)
    return {
        "variant": figures.variant,
        "model": model,
        "users": figures.users,
        "replies": figures.replies,
        "prompt_tokens": spent["prompt_tokens"] if spent else 0,
        "completion_tokens": spent["completion_tokens"] if spent else 0,
        "cost_usd": spent["cost_usd"] if spent else 0.0,
        "unpriced_models": spent["unpriced_models"] if spent else [],
        "latency_p50_ms": figures.p50,
        "latency_p95_ms": figures.p95,
        # Messages left without a reply (the responder failed for good) and streamed
        # replies cut off; replies deferred and answered later are not errors.
        "errors": figures.failed + figures.interrupted,
        "unanswered": figures.failed,
        "interrupted": figures.interrupted,
        "feedback_positive": figures.positive,
        "feedback_negative": figures.negative,
        "positive_share": figures.positive / rated if rated else None,
        "positive_share_ci95": list(interval) if interval else None,
    }


def _report_view(out: Out, data: dict[str, Any]) -> None:
    rows = [
        (
            v["variant"], v["model"], v["users"], v["replies"], v["prompt_tokens"],
            v["completion_tokens"], _cost(v["cost_usd"]), _ms(v["latency_p50_ms"]),
            _ms(v["latency_p95_ms"]), v["errors"],
            f"{v['feedback_positive']}/{v['feedback_negative']}", _share(v),
        )
        for v in data["variants"]
    ]  # fmt: skip
    state = "running" if data["stopped_at"] is None else f"stopped {data['stopped_at']}"
    out.table(
        f"Experiment {data['name']} ({data['scope']}, {state}, since {data['created_at']})",
        ["variant", "model", "users", "replies", "prompt tokens", "completion tokens",
         "cost (USD)", "p50 ms", "p95 ms", "errors", "feedback +/-", "positive (95% CI)"],
        rows,
    )  # fmt: skip
    unpriced = sorted({m for v in data["variants"] for m in v["unpriced_models"]})
    if unpriced:
        out.note(f"no price for {', '.join(unpriced)}: cost unknown (LLM_PRICES)", "yellow")


def _changed(ops: Ops, out: Out, change: ExperimentChange, action: str) -> int:
    data = _fields(change.experiment)
    data["action"] = action
    data["workers_notified"] = change.notified
    if change.publish_error is not None:
        refresh = ops.settings.flags_refresh_seconds
        warn(
            out,
            data,
            f"the experiment is {action} in Postgres, but telling the workers failed "
            f"({change.publish_error}): they follow within FLAGS_REFRESH_SECONDS ({refresh:g} s)",
        )

    def view(out: Out, data: dict[str, Any]) -> None:
        shown = {k: v for k, v in data.items() if k not in ("variants", "warnings")}
        shown["variants"] = _variants_text(data)
        out.pairs(f"Experiment {data['name']} {action}", shown)

    out.emit(data, view)
    return 0


async def _get(ops: Ops, name: str, *, reads: bool = False) -> Experiment:
    found = await (ops.reads if reads else ops.store).experiments.get(name)
    if found is None:
        raise NotFound(f"no experiment named {name}")
    return found


def _cache(ops: Ops) -> ExperimentCache:
    return ExperimentCache(ops.cache.redis, ops.cache.keys, ops.cache.guard)


def _fields(experiment: Experiment) -> dict[str, Any]:
    return {
        "name": experiment.name,
        "scope": experiment.scope,
        "variants": [v.fields() for v in experiment.variants],
        "created_at": experiment.created_at,
        "stopped_at": experiment.stopped_at,
        "running": experiment.running,
    }


def _variants_text(data: dict[str, Any]) -> str:
    return ", ".join(f"{v['name']}={v['model']}:{v['share']}" for v in data["variants"])


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _share(variant: dict[str, Any]) -> str:
    interval = variant["positive_share_ci95"]
    if interval is None:
        return "-"
    low, high = interval
    return f"{variant['positive_share']:.0%} ({low:.0%}-{high:.0%})"
