"""`bot ops experiment create|list|show|stop|report` against real Postgres and Redis:
refusals in one line before any store is reached, one running experiment per scope,
and a report whose figures are checked against the rows the service stored."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.emulators.llm_api import LLMServer, error
from bot.experiments import RunningExperiments
from bot.ops.experiments import wilson
from tests.ops.conftest import Ops
from tests.support import ServiceFactory, execute, fetch, handled, msg, new_user


@pytest.fixture
async def no_experiments(engine: AsyncEngine) -> AsyncIterator[None]:
    await execute(engine, "DELETE FROM experiments")
    yield
    await execute(engine, "DELETE FROM experiments")


def exp_name() -> str:
    return f"exp-{uuid.uuid4().hex[:8]}"


async def test_create_refuses_bad_variants_in_one_line(ops: Ops, no_experiments: None) -> None:
    cases = [
        (["--variant", "a=gpt-4o:60", "--variant", "b=gpt-4o-mini:30"], "summing to 100"),
        (["--variant", "a=gpt-4o:100"], "at least two variants"),
        (["--variant", "a=gpt-4o", "--variant", "b=x:50"], "is not NAME=MODEL:SHARE"),
        (["--variant", "a=gpt-4o:50", "--variant", "a=x:50"], "must differ"),
        (["--variant", "a=gpt-4o:50", "--variant", "b=llama3:50"], "not in ALLOWED_MODELS"),
    ]
    for variants, reason in cases:
        ran = await ops(
            "experiment", "create", exp_name(), *variants, "--json",
            ALLOWED_MODELS="gpt-4o,gpt-4o-mini",
        )  # fmt: skip
        assert ran.code == 2, (variants, ran.err)
        assert reason in ran.json()["error"] and len(ran.err.strip().splitlines()) == 1
    assert (await ops("experiment", "list", "--json")).data["experiments"] == []


async def test_one_experiment_runs_per_scope_and_a_name_is_never_reused(
    ops: Ops, no_experiments: None
) -> None:
    first, second = exp_name(), exp_name()
    variants = ["--variant", "a=gpt-4o:50", "--variant", "b=gpt-4o-mini:50"]
    made = (await ops("experiment", "create", first, *variants, "--json")).data
    assert made["action"] == "created" and made["scope"] == "global" and made["running"]
    clash = await ops("experiment", "create", second, *variants, "--json")
    assert clash.code == 1 and f"experiment {first} is running for global" in clash.json()["error"]
    scoped = await ops("experiment", "create", second, *variants, "--channel", "telegram", "--json")
    assert scoped.data["scope"] == "telegram"

    assert (await ops("experiment", "stop", first, "--json")).data["running"] is False
    again = await ops("experiment", "stop", first)
    assert again.code == 1 and "stopped already" in again.err
    reused = await ops("experiment", "create", first, *variants)
    assert reused.code == 1 and "exists already" in reused.err
    listed = (await ops("experiment", "list", "--json")).data["experiments"]
    assert {(e["name"], e["running"]) for e in listed} == {(first, False), (second, True)}
    missing = await ops("experiment", "show", "no-such-experiment")
    assert missing.code == 1 and "no experiment named no-such-experiment" in missing.err
    table = await ops("experiment", "list")
    assert table.code == 0 and second in table.out and "a=gpt-4o:50" in table.out


def variant(data: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in data["variants"] if v["variant"] == name]
    return found


async def test_report_figures_match_the_stored_rows(
    ops: Ops,
    no_experiments: None,
    make_service: ServiceFactory,
    llm: LLMServer,
    engine: AsyncEngine,
) -> None:
    name = exp_name()
    created = await ops(
        "experiment", "create", name, "--variant", "a=gpt-4o:50", "--variant",
        "b=gpt-4o-mini:50", "--json",
    )  # fmt: skip
    assert created.code == 0
    service = await make_service(llm_base_url=llm.url)
    assert isinstance(service.experiments, RunningExperiments)
    await service.experiments.load()
    users = [new_user() for _ in range(10)]
    for user in users:
        for n in range(2):
            await handled(service, msg(user, f"{user} asks {n}", pid=f"{user}:{n}"))
    llm.then(error(400, "refused"))  # one message left without a reply: an error
    failed = users[0]
    await handled(service, msg(failed, "this one fails", pid=f"{failed}:x"))
    replies = await fetch(
        engine,
        """SELECT r.id, r.metadata->>'variant' AS variant, r.token_count AS completion,
                  q.token_count AS prompt, (r.metadata->>'latency_ms')::int AS latency,
                  coalesce(q.author_id, c.user_id) AS user_id
           FROM messages r JOIN messages q ON q.id = r.reply_to
           JOIN conversations c ON c.id = r.conversation_id
           WHERE r.role = 'assistant' AND r.metadata->>'experiment' = :n""",
        n=name,
    )
    assert len(replies) == 20
    rater = await _user_id(engine, users[1])
    ratings = {replies[0].id: 1, replies[1].id: 1, replies[2].id: -1}
    for reply_id, rating in ratings.items():
        await service.store.feedback.record(reply_id, rater, rating)
    await service.store.feedback.record(replies[3].id, rater, 1)
    assert await service.store.feedback.remove(replies[3].id, rater)  # taken back

    data = await ops("experiment", "report", name, "--json", LLM_PRICES="gpt-4o-served=2/8")
    report = data.data
    (failed_variant,) = {r.variant for r in await _assigned(engine, name, failed)}
    for name_ in ("a", "b"):
        mine = [r for r in replies if r.variant == name_]
        found = variant(report, name_)
        assert found["replies"] == len(mine)
        assert found["users"] == len({r.user_id for r in mine})
        assert found["prompt_tokens"] == sum(r.prompt for r in mine)
        assert found["completion_tokens"] == sum(r.completion for r in mine)
        latencies = sorted(r.latency for r in mine)
        if latencies:
            assert min(latencies) <= found["latency_p50_ms"] <= found["latency_p95_ms"]
            assert found["latency_p95_ms"] <= max(latencies)
        assert found["errors"] == (1 if name_ == failed_variant else 0)
        rated = [ratings[r.id] for r in mine if r.id in ratings]
        assert found["feedback_positive"] == rated.count(1)
        assert found["feedback_negative"] == rated.count(-1)
    priced = variant(report, "a")
    expected = (priced["prompt_tokens"] * 2 + priced["completion_tokens"] * 8) / 1_000_000
    assert priced["cost_usd"] == pytest.approx(expected)
    assert variant(report, "b")["cost_usd"] is None  # gpt-4o-mini-served has no price
    assert sum(v["feedback_positive"] for v in report["variants"]) == 2
    table = await ops("experiment", "report", name)
    assert table.code == 0 and "positive (95% CI)" in table.out and "gpt-4o-mini" in table.out
    shown = (await ops("experiment", "show", name, "--json")).data
    assert sum(shown["assigned"].values()) == 10 and shown["recorded_in_redis"] == 10


def test_wilson_interval() -> None:
    assert wilson(0, 0) is None
    low, high = wilson(8, 10)  # type: ignore[misc]
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    low, high = wilson(0, 5)  # type: ignore[misc]
    assert low == 0.0 and high == pytest.approx(0.4345, abs=1e-3)


async def _user_id(engine: AsyncEngine, user: str) -> uuid.UUID:
    (row,) = await fetch(engine, "SELECT id FROM users WHERE channel_user_id = :u", u=user)
    return uuid.UUID(str(row.id))


async def _assigned(engine: AsyncEngine, name: str, user: str) -> list[Any]:
    return await fetch(
        engine,
        """SELECT a.variant FROM experiment_assignments a JOIN users u ON u.id = a.user_id
           WHERE a.experiment = :n AND u.channel_user_id = :u""",
        n=name,
        u=user,
    )
