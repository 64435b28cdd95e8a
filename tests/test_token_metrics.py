"""bot_llm_tokens_total{model, kind}: the tokens of each stored reply, as the LLM API
reported them, counted in memory and read at each scrape (no round trip per message)."""

from __future__ import annotations

from bot.emulators.llm_api import LLMServer, Step
from bot.metrics import Metrics
from tests.support import ServiceFactory, handled, msg, new_user
from tests.test_metrics import samples

TOKENS = "bot_llm_tokens_total"


def tokens(metrics: Metrics, model: str, kind: str) -> float:
    return samples(metrics).get((TOKENS, (("kind", kind), ("model", model))), 0.0)


async def test_tokens_of_stored_replies_by_model_and_kind(
    make_service: ServiceFactory, llm: LLMServer
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics, llm_base_url=llm.url, default_model="m1")
    user = new_user()
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    llm.then(Step(usage=usage), Step(usage=usage, model="m2-served"))
    pieces: list[str] = []

    async def sink(piece: str) -> None:
        pieces.append(piece)

    await handled(service, msg(user, "whole", f"{user}-ev-1"))
    await service.handle(msg(user, "streamed", f"{user}-ev-2"), on_text=sink)
    await handled(
        service, msg(user, "whole", f"{user}-ev-1")
    )  # a redelivery: stored once, counted once

    assert pieces  # the second reply was streamed
    assert (tokens(metrics, "m1-served", "prompt"), tokens(metrics, "m1-served", "completion")) == (
        100,
        20,
    )
    assert (tokens(metrics, "m2-served", "prompt"), tokens(metrics, "m2-served", "completion")) == (
        100,
        20,
    )


async def test_no_tokens_are_counted_without_a_stored_reply(
    make_service: ServiceFactory, llm: LLMServer
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics, llm_base_url=llm.url, default_model="m3")
    llm.then(*[Step(status=400, body={"error": {"message": "no"}})] * 2)

    user = new_user()
    await handled(service, msg(user, "refused", f"{user}-ev-3"))  # an apology, no reply stored

    assert not any(name == TOKENS for name, _ in samples(metrics))
