"""The LLM hanging past its timeout, or failing, for some users in the middle of a
steady load.

The bot answers through the real OpenAI-compatible responder, against the local
chat-completions server of bot/emulators/llm_api.py. While the fault lasts,
the server never answers the requests of some users (it hangs far beyond
LLM_TIMEOUT_SECONDS) and answers 500 to those of others; everyone else is served as
usual. The victims must get the apology, with their message stored and no reply row;
the others must notice nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ReplyKind
from bot.emulators.llm_api import LLMServer, Step, error
from tests.reliability.conftest import Report
from tests.reliability.load import Load, LoadPlan, assert_nothing_lost, measure, run_with_outage
from tests.support import ServiceFactory

LLM_TIMEOUT = 1.0  # LLM_TIMEOUT_SECONDS: one call
LLM_DEADLINE = 2.0  # LLM_RETRY_DEADLINE_SECONDS: all tries of one reply
PLAN = LoadPlan(users=30, per_user=8, concurrency=8)
FAULT_AFTER = 2 * PLAN.users
FAULT_SECONDS = 3.0
HANGING, FAILING = 3, 3  # victims of each kind, among the users


class PickyLLM(LLMServer):
    """The local LLM server, answering the requests of the users in `victims` with
    their step while `faulty` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.victims: dict[str, Step] = {}
        self.faulty = False

    def break_down(self) -> None:
        self.faulty = True

    def mend(self) -> None:
        self.faulty = False

    async def _completions(self, request: web.Request) -> web.Response:
        last = (await request.json())["messages"][-1]["content"]
        step = next((s for user, s in self.victims.items() if user in last), None)
        if self.faulty and step is not None:
            # aiohttp keeps the body it read, so the parent reads it again at once (no
            # await that yields comes first): this step is the next one it takes.
            self.script.appendleft(step)
        return await super()._completions(request)


@pytest.fixture
async def llm() -> AsyncIterator[PickyLLM]:
    server = PickyLLM()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.timeout(90)
async def test_llm_hanging_or_failing_for_some_users_mid_load(
    make_service: ServiceFactory, llm: PickyLLM, engine: AsyncEngine, report: Report
) -> None:
    service = await make_service(
        llm_base_url=llm.url,
        llm_timeout_seconds=LLM_TIMEOUT,
        llm_retry_deadline_seconds=LLM_DEADLINE,
    )
    load = Load(service, PLAN)
    hanging = load.users[:HANGING]
    failing = load.users[HANGING : HANGING + FAILING]
    victims = set(hanging + failing)
    llm.victims = {u: Step(delay=600) for u in hanging} | {u: error(500) for u in failing}

    try:
        seconds = await run_with_outage(load, FAULT_AFTER, FAULT_SECONDS, llm.break_down, llm.mend)
    finally:
        await service.responder.aclose()
    result = await measure(load, engine, "llm hangs / fails (6 users)", seconds, victims)
    report(result.noting(responder_error=service.stats["responder_error"]))

    assert_nothing_lost(result)  # apologized messages stored without a reply row
    apologized = [a for a in load.attempts if a.apology]
    assert apologized, result.line()
    told = {a.user for a in apologized}
    assert told <= victims and told & set(hanging) and told & set(failing)
    assert load.fault_ended is not None
    assert all(a.started < load.fault_ended for a in apologized)
    # Everyone else was answered every time, and never waited for a hung call.
    others = [a for a in load.attempts if a.user not in victims]
    assert all(a.kind is ReplyKind.ANSWER for a in others)
    assert max(a.latency for a in others) < LLM_TIMEOUT, result.line()
    assert result.recovery_seconds is not None, result.line()  # the victims answered again
