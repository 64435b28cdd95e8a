"""`bot ops usage`: tokens of the stored replies and their cost, grouped as asked, against
what Postgres holds; prices from LLM_PRICES over the defaults (bot/pricing.py)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.pricing import DEFAULT_PRICES, Price, parse_prices
from tests.ops.conftest import Ops
from tests.support import ServiceFactory, execute, fetch, handled, msg, new_user

_TOKENS = """
SELECT count(*) AS replies, sum(q.token_count) AS prompt, sum(r.token_count) AS completion
FROM messages r JOIN messages q ON q.id = r.reply_to
JOIN conversations c ON c.id = r.conversation_id JOIN users u ON u.id = c.user_id
WHERE r.role = 'assistant' AND u.channel_user_id = :user
"""


async def tokens_of(engine: AsyncEngine, user: str) -> tuple[int, int, int]:
    (row,) = await fetch(engine, _TOKENS, user=user)
    return int(row.replies), int(row.prompt), int(row.completion)


def group(data: dict[str, Any], key: str) -> dict[str, Any]:
    (found,) = [g for g in data["groups"] if g["key"] == key]
    return found


async def test_usage_counts_each_writers_tokens_and_prices_them(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service()
    busy, quiet = new_user(), new_user()
    for n, (user, text) in enumerate(
        [(busy, "a first question"), (busy, "and a much longer second one, please"),
         (quiet, "hi")]
    ):  # fmt: skip
        await handled(service, msg(user, text, pid=f"{user}:{n}"))

    data = (await ops("usage", "--by", "user", "--json")).data
    for user in (busy, quiet):
        replies, prompt, completion = await tokens_of(engine, user)
        found = group(data, f"console:{user}")
        assert (found["replies"], found["prompt_tokens"], found["completion_tokens"]) == (
            replies, prompt, completion,
        )  # fmt: skip
        assert found["cost_usd"] is None and found["unpriced_models"] == ["echo"]
    assert group(data, f"console:{busy}")["replies"] == 2
    assert data["total"]["cost_usd"] is None
    table = await ops("usage", "--by", "user")
    assert table.code == 0 and f"console:{busy}" in table.out
    # The note names every model with no price (the run's other tests used others too).
    note = re.search(r"no price for (.*?): set LLM_PRICES", table.out, re.S)
    assert note is not None, table.out
    assert "echo" in " ".join(note.group(1).split()).split(", ")

    priced = (await ops("usage", "--by", "user", "--json", LLM_PRICES="echo=1/2")).data
    replies, prompt, completion = await tokens_of(engine, busy)
    found = group(priced, f"console:{busy}")
    assert found["cost_usd"] == pytest.approx((prompt * 1 + completion * 2) / 1_000_000)
    assert found["unpriced_models"] == []

    chats = (await ops("usage", "--by", "chat", "--json")).data
    assert group(chats, f"console:dm:{quiet}")["replies"] == 1


async def test_stats_shows_the_last_days_tokens_and_cost(
    ops: Ops, make_service: ServiceFactory
) -> None:
    service = await make_service()
    user = new_user()
    await handled(service, msg(user, "hello there", pid=f"{user}:1"))
    before = (await ops("stats", "--json", LLM_PRICES="echo=1/1")).data["tokens_last_24h"]
    await handled(service, msg(user, "and once more", pid=f"{user}:2"))
    after = (await ops("stats", "--json")).data["tokens_last_24h"]
    assert after["replies"] >= before["replies"] + 1
    assert after["completion_tokens"] > before["completion_tokens"]
    # The run's other tests wrote replies of other models too: the cost is theirs also.
    assert after["cost_usd"] is None or after["cost_usd"] > 0
    table = await ops("stats")
    assert "LLM tokens, last 24 h" in table.out


async def test_usage_counts_only_replies_of_the_period(
    ops: Ops, make_service: ServiceFactory
) -> None:
    service = await make_service()
    user = new_user()
    await handled(service, msg(user, "hello", pid=f"{user}:1"))
    recent = (await ops("usage", "--by", "user", "--since", "1h", "--json")).data
    assert group(recent, f"console:{user}")["replies"] == 1
    await asyncio.sleep(1.2)
    later = (await ops("usage", "--by", "user", "--since", "1s", "--json")).data
    assert [g for g in later["groups"] if g["key"] == f"console:{user}"] == []


async def test_usage_counts_the_calls_that_made_summaries(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service()
    user = new_user()
    reply = await handled(service, msg(user, "a question", pid=f"{user}:1"))
    before = group((await ops("usage", "--by", "user", "--json")).data, f"console:{user}")
    await execute(
        engine,
        "INSERT INTO messages (conversation_id, role, content, model_used, token_count, "
        "channel_type, metadata) VALUES (:c, 'system', 'an earlier talk', 'echo', 7, "
        """'console', '{"summary": true, "covers": 2, "prompt_tokens": 40}')""",
        c=reply.conversation_id,
    )

    after = group((await ops("usage", "--by", "user", "--json")).data, f"console:{user}")
    assert after["replies"] == before["replies"] == 1  # a summary is no reply
    assert after["prompt_tokens"] == before["prompt_tokens"] + 40
    assert after["completion_tokens"] == before["completion_tokens"] + 7


async def test_usage_refuses_a_bad_period_and_grouping(ops: Ops) -> None:
    assert (await ops("usage", "--since", "soon")).code == 2
    assert (await ops("usage", "--by", "weather")).code == 2


def test_prices_parse_and_refuse_with_the_setting_named() -> None:
    assert parse_prices("gpt-4o=2/8, local=0/0") == {
        "gpt-4o": Price(2, 8),
        "local": Price(0, 0),
    }
    for bad in ("gpt-4o=2", "=1/2", "x=a/b", "x=-1/2"):
        with pytest.raises(ValueError, match="model=prompt/completion"):
            parse_prices(bad)
    settings = Settings(_env_file=None, llm_prices="gpt-4o=1/1")  # type: ignore[arg-type]
    assert settings.llm_prices == {"gpt-4o": Price(1, 1)}
    assert DEFAULT_PRICES["gpt-4o-mini"].of(1_000_000, 1_000_000) == pytest.approx(0.75)
