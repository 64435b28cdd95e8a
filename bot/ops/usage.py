"""`bot ops usage`: tokens and their cost, grouped as asked, over a recent period.

Read from DATABASE_READ_URL's replica when there is one. A cost is each model's price
(bot/pricing.py, LLM_PRICES over the defaults) times its tokens; a group with a model
that has no price shows its cost as unknown, and names the model.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.ops.context import Ops
from bot.ops.render import Out
from bot.pricing import Price, prices_with
from bot.store.usage import UsageBy, UsageRow


async def usage(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    since = datetime.now(UTC) - args.since
    rows = await ops.reads.usage.usage(UsageBy(args.by), since)
    data = report(rows, prices_with(ops.settings.llm_prices), args.by, since)
    out.emit(data, usage_view)
    return 0


async def last_day(ops: Ops) -> dict[str, Any]:
    """The last 24 hours' totals, for `bot ops stats`."""
    since = datetime.now(UTC) - timedelta(days=1)
    rows = await ops.reads.usage.usage(UsageBy.MODEL, since)
    found = report(rows, prices_with(ops.settings.llm_prices), "model", since)
    total: dict[str, Any] = found["total"]
    return total


def report(
    rows: list[UsageRow], prices: dict[str, Price], by: str, since: datetime
) -> dict[str, Any]:
    """The groups (most expensive first, then most tokens) and the totals."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(row.key, _empty(row.key))
        _add(group, row, prices.get(row.model))
    total = _empty("total")
    for row in rows:
        _add(total, row, prices.get(row.model))
    for entry in (*groups.values(), total):
        entry["unpriced_models"] = sorted(entry["unpriced_models"])
        if entry["unpriced_models"]:
            entry["cost_usd"] = None
    ordered = sorted(groups.values(), key=lambda g: (-(g["cost_usd"] or 0), -g["tokens"]))
    return {"by": by, "since": since.isoformat(), "groups": ordered, "total": total}


def _empty(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "replies": 0,
        "users": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "tokens": 0,
        "cost_usd": 0.0,
        "unpriced_models": set(),
    }


def _add(group: dict[str, Any], row: UsageRow, price: Price | None) -> None:
    group["replies"] += row.replies
    group["users"] = max(group["users"], row.users)  # at least; a writer may use two models
    group["prompt_tokens"] += row.prompt_tokens
    group["completion_tokens"] += row.completion_tokens
    group["tokens"] += row.prompt_tokens + row.completion_tokens
    if price is None:
        group["unpriced_models"].add(row.model)
    else:
        group["cost_usd"] += price.of(row.prompt_tokens, row.completion_tokens)


def usage_view(out: Out, data: dict[str, Any]) -> None:
    rows = [
        (
            g["key"],
            g["replies"],
            g["prompt_tokens"],
            g["completion_tokens"],
            _cost(g),
        )
        for g in (*data["groups"], data["total"])
    ]
    title = f"Tokens and cost by {data['by']} since {data['since'][:19]} UTC"
    out.table(
        title,
        [data["by"], "replies", "prompt tokens", "completion tokens", "cost (USD)"],
        rows,
        empty="no replies in the period",
    )
    unpriced = data["total"]["unpriced_models"]
    if unpriced:
        out.note(
            f"no price for {', '.join(unpriced)}: set LLM_PRICES (model=prompt/completion "
            "per million tokens)",
            style="yellow",
        )


def _cost(group: dict[str, Any]) -> str:
    return "unknown" if group["cost_usd"] is None else f"{group['cost_usd']:.4f}"
