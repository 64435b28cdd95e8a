"""A/B model experiments in the message flow, end to end: real Postgres and Redis, the
local LLM server, services built like workers (each with its own RunningExperiments,
pub/sub listener included).

A user's variant is sticky across workers and Redis flushes, the share split holds
over many users, the LLM is asked for the variant's model, replies carry the variant
in their metadata, a conversation's override beats the variant, and a stopped
experiment sends its users back to the usual model resolution.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ReplyKind
from bot.emulators.llm_api import LLMServer
from bot.experiments import RunningExperiments, create_experiment, stop_experiment
from bot.experimentset import GLOBAL, Experiment, ExperimentSet, Variant
from bot.service import ConversationService
from tests.support import ServiceFactory, execute, fetch, flush_cache, handled, msg, new_user

Started = Callable[..., Awaitable[ConversationService]]
A, B = Variant("a", "model-a", 50), Variant("b", "model-b", 50)


@pytest.fixture
async def no_experiments(engine: AsyncEngine) -> AsyncIterator[None]:
    """Experiments are global to the run's database: none before, none left after."""
    await execute(engine, "DELETE FROM experiments")
    yield
    await execute(engine, "DELETE FROM experiments")


@pytest.fixture
async def started(make_service: ServiceFactory, no_experiments: None) -> AsyncIterator[Started]:
    """Services whose experiments are followed (and stopped at the end), like workers."""
    running: list[RunningExperiments] = []

    async def make(**overrides: Any) -> ConversationService:
        service = await make_service(**overrides)
        experiments = service.experiments
        assert isinstance(experiments, RunningExperiments)
        await experiments.start()
        running.append(experiments)
        return service

    yield make
    for experiments in running:
        await experiments.stop()


def experiments_of(service: ConversationService) -> RunningExperiments:
    assert isinstance(service.experiments, RunningExperiments)
    return service.experiments


async def create(service: ConversationService, *variants: Variant, scope: str = GLOBAL) -> str:
    name = f"exp-{uuid.uuid4().hex[:8]}"
    own = experiments_of(service)
    await create_experiment(own.store, own.cache, name, variants or (A, B), scope)
    return name


async def followed(services: list[ConversationService], name: str | None, channel: str) -> None:
    """Wait until every service runs `name` (None: no experiment) for `channel`."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        current = [s.experiments.current.for_channel(channel) for s in services]
        if all((e.name if e else None) == name for e in current):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the workers did not follow: {current}")


async def assigned(engine: AsyncEngine, name: str) -> dict[uuid.UUID, str]:
    rows = await fetch(
        engine, "SELECT user_id, variant FROM experiment_assignments WHERE experiment = :n", n=name
    )
    return {row.user_id: row.variant for row in rows}


async def replies_of(engine: AsyncEngine, user: str) -> list[Any]:
    return await fetch(
        engine,
        """SELECT m.role, m.model_used, m.metadata FROM messages m
           JOIN conversations c ON c.id = m.conversation_id
           JOIN users u ON u.id = c.user_id
           WHERE u.channel_user_id = :user ORDER BY m.timestamp, m.role DESC""",
        user=user,
    )


async def user_id(engine: AsyncEngine, user: str) -> uuid.UUID:
    (row,) = await fetch(engine, "SELECT id FROM users WHERE channel_user_id = :u", u=user)
    return uuid.UUID(str(row.id))


def asked_models(llm: LLMServer, text: str) -> list[str]:
    return [r["model"] for r in llm.requests if r["messages"][-1]["content"] == text]


async def test_a_variant_is_sticky_across_workers_and_a_redis_flush(
    started: Started, llm: LLMServer, engine: AsyncEngine, redis: Redis
) -> None:
    first = await started(llm_base_url=llm.url, llm_max_concurrency=4)
    second = await started(llm_base_url=llm.url, llm_max_concurrency=4)
    name = await create(first)
    await followed([first, second], name, "console")  # told on pub/sub, not by a reload
    users = [new_user() for _ in range(12)]
    seen: dict[str, set[str]] = {user: set() for user in users}
    for round_, service in enumerate([first, second, "flush", first, second]):
        if service == "flush":
            assert await flush_cache(first) > 0  # this deployment's keys, every one
            continue
        assert isinstance(service, ConversationService)
        for user in users:
            text = f"{user} round {round_}"
            reply = await handled(service, msg(user, text, pid=f"{user}:{round_}"))
            assert reply.kind is ReplyKind.ANSWER
            seen[user].update(asked_models(llm, text))
    by_user = {user: models.pop() for user, models in seen.items() if len(models) == 1}
    assert len(by_user) == len(users), seen  # one model per user, whoever answered
    assert set(by_user.values()) == {"model-a", "model-b"}  # 12 users: both, by far

    stored = await assigned(engine, name)
    keys = first.cache.keys
    recorded = await redis.hgetall(keys.ab_test(name))
    for user, model in by_user.items():
        uid = await user_id(engine, user)
        variant = "a" if model == "model-a" else "b"
        assert stored[uid] == variant
        assert recorded[keys.ab_test_field(uid).encode()] == variant.encode()  # rewritten
        rows = await replies_of(engine, user)
        assert [r.role for r in rows] == ["user", "assistant"] * 4
        for row in rows:
            tags = {k: row.metadata.get(k) for k in ("experiment", "variant")}
            assert tags == {"experiment": name, "variant": variant}
        replies = [r for r in rows if r.role == "assistant"]
        assert {r.model_used for r in replies} == {f"{model}-served"}
        assert all(r.metadata["latency_ms"] >= 0 for r in replies)


def test_the_shares_split_the_users_deterministically() -> None:
    experiment = Experiment("split", (Variant("a", "m1", 70), Variant("b", "m2", 30)), GLOBAL)
    users = [uuid.UUID(int=n * 7919 + 13) for n in range(4000)]
    counts = Counter(experiment.variant_for(u).name for u in users)
    assert abs(counts["a"] / len(users) - 0.70) < 0.03, counts
    again = Experiment("split", experiment.variants, "discord")
    assert [experiment.variant_for(u) for u in users] == [again.variant_for(u) for u in users]
    other = Experiment("other", experiment.variants, GLOBAL)  # another hash: other groups
    assert [experiment.variant_for(u) for u in users] != [other.variant_for(u) for u in users]


async def test_the_split_holds_over_many_users_through_the_service(
    started: Started, engine: AsyncEngine
) -> None:
    service = await started()  # the echo responder: quick
    name = await create(service, Variant("big", "m-big", 80), Variant("small", "m-small", 20))
    await followed([service], name, "console")
    users = [new_user() for _ in range(250)]
    await asyncio.gather(*(handled(service, msg(u, "hi")) for u in users))
    counts = Counter((await assigned(engine, name)).values())
    assert sum(counts.values()) == len(users)
    # Binomial(250, 0.2): the standard deviation is 6.3 users; 5 of them either way.
    assert 50 - 32 <= counts["small"] <= 50 + 32, counts


async def test_a_conversation_override_beats_the_variant_and_a_stop_ends_it(
    started: Started, llm: LLMServer, engine: AsyncEngine
) -> None:
    service = await started(llm_base_url=llm.url)
    other = await started(llm_base_url=llm.url)
    name = await create(service, Variant("a", "model-a", 100 - 1), Variant("b", "model-a", 1))
    await followed([service, other], name, "console")
    user = new_user()
    await handled(service, msg(user, "in the experiment"))
    assert asked_models(llm, "in the experiment") == ["model-a"]
    # A preference (/model in a DM) is below the variant: the variant still answers.
    chosen = await handled(service, msg(user, "/model my-own"))
    assert "trying out model-a" in (chosen.text or "")
    await handled(service, msg(user, "still in it"))
    assert asked_models(llm, "still in it") == ["model-a"]

    await stop_experiment(experiments_of(service).store, experiments_of(service).cache, name)
    await followed([service, other], None, "console")
    await handled(other, msg(user, "after the stop"))
    assert asked_models(llm, "after the stop") == ["my-own"]  # back to the preference
    rows = await replies_of(engine, user)
    assert "experiment" not in rows[-1].metadata and "experiment" not in rows[-2].metadata


async def test_a_pinned_conversation_keeps_its_model_in_an_experiment(
    started: Started, llm: LLMServer, engine: AsyncEngine
) -> None:
    service = await started(llm_base_url=llm.url)
    name = await create(service, Variant("a", "model-a", 50), Variant("b", "model-b", 50))
    await followed([service], name, "console")
    user = new_user()
    await handled(service, msg(user, "first"))  # the session is cached now
    await execute(
        engine,
        """UPDATE conversations SET model_override = 'pinned-model'
           WHERE user_id = (SELECT id FROM users WHERE channel_user_id = :u)""",
        u=user,
    )
    await flush_cache(service)  # a /model in a group would rewrite the session itself
    await handled(service, msg(user, "pinned now"))
    assert asked_models(llm, "pinned now") == ["pinned-model"]
    rows = await replies_of(engine, user)
    assert "experiment" not in rows[-1].metadata  # not counted for any variant
    assert len(await assigned(engine, name)) == 1  # the first exchange's assignment


async def test_a_channel_experiment_beats_the_global_one_there() -> None:
    global_ = Experiment("g", (A, B), GLOBAL)
    telegram = Experiment("t", (Variant("x", "mx", 50), Variant("y", "my", 50)), "telegram")
    running = ExperimentSet.of([global_, telegram])
    user = uuid.uuid4()
    assert running.assign("telegram", user).experiment == "t"  # type: ignore[union-attr]
    assert running.assign("discord", user).experiment == "g"  # type: ignore[union-attr]
    assert ExperimentSet.of([telegram]).assign("slack", user) is None
