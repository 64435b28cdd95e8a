"""Moderation (MODERATION, MODERATION_FAIL) against the local LLM server's /v1/moderations,
with real Postgres and Redis: flagged input refused and never stored, a flagged reply
replaced by a refusal that is what gets stored, and a failing endpoint open or closed."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import load_settings
from bot.domain import ReplyKind
from bot.emulators.llm_api import LLMServer, Step
from bot.errors import ConfigError
from bot.metrics import Metrics
from bot.service import REFUSED_REPLY_TEXT, REFUSED_TEXT, UNCHECKED_TEXT, ConversationService
from tests.support import ServiceFactory, fetch, handled, msg, new_user
from tests.test_metrics import samples

FAST = {"moderation_timeout_seconds": 0.5, "llm_retry_deadline_seconds": 5}


async def stored(engine: AsyncEngine, user: str) -> list[Any]:
    return await fetch(
        engine,
        "SELECT m.role, m.content, m.metadata FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id "
        "WHERE u.channel_user_id = :u ORDER BY m.timestamp",
        u=user,
    )


def refusals(metrics: Metrics, direction: str) -> float:
    return samples(metrics)[("bot_moderation_refusals_total", (("direction", direction),))]


@pytest.mark.parametrize("value", ["input", "output", "both"])
def test_moderation_without_an_llm_url_is_a_one_line_error(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, moderation=value)
    assert "MODERATION" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="MODERATION"):
        load_settings(_env_file=None, moderation="sometimes", llm_base_url="http://x/v1")


async def test_flagged_input_is_refused_without_the_responder_or_storage(
    make_service: ServiceFactory,
    llm: LLMServer,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics, llm_base_url=llm.url, moderation="input")
    user = new_user()
    caplog.set_level(logging.DEBUG)

    refused = await handled(service, msg(user, "something Forbidden here", f"{user}-ev-1"))

    assert (refused.kind, refused.text) == (ReplyKind.REFUSED, REFUSED_TEXT)
    assert llm.requests == []  # the responder was not called
    assert await stored(engine, user) == []
    assert llm.moderations == [
        {"input": "something Forbidden here", "model": "omni-moderation-latest"}
    ]
    assert refusals(metrics, "input") == 1 and refusals(metrics, "output") == 0
    assert all("Forbidden" not in record.getMessage() for record in caplog.records)

    answered = await handled(service, msg(user, "hello", f"{user}-ev-2"))
    assert answered.kind is ReplyKind.ANSWER and len(llm.requests) == 1
    assert [row.content for row in await stored(engine, user)] == ["hello", answered.text]


async def test_a_flagged_reply_is_replaced_and_never_enters_the_context(
    make_service: ServiceFactory, llm: LLMServer, engine: AsyncEngine
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics, llm_base_url=llm.url, moderation="output")
    user = new_user()
    llm.then(Step(text="a forbidden answer"))
    shown: list[str] = []

    async def sink(piece: str) -> None:
        shown.append(piece)

    reply = await service.handle(msg(user, "tell me", f"{user}-ev-1"), on_text=sink)
    service.delivered(msg(user, "tell me", f"{user}-ev-1"), reply.kind)
    await handled(service, msg(user, "and then?", f"{user}-ev-2"))

    assert reply.text == REFUSED_REPLY_TEXT and shown == []  # checked whole: not streamed
    rows = await stored(engine, user)
    assert [(r.role, r.content) for r in rows[:2]] == [
        ("user", "tell me"),
        ("assistant", REFUSED_REPLY_TEXT),
    ]
    assert rows[1].metadata.get("moderated") == "flagged"
    assert "moderated" not in rows[3].metadata
    second_prompt = json.dumps(llm.requests[1]["messages"])
    assert "forbidden" not in second_prompt and REFUSED_REPLY_TEXT in second_prompt
    assert refusals(metrics, "output") == 1
    assert [m["input"] for m in llm.moderations] == ["a forbidden answer", rows[3].content]


@pytest.mark.parametrize("failure", ["status", "hang"])
async def test_a_failing_endpoint_fails_open_by_default(
    make_service: ServiceFactory, llm: LLMServer, engine: AsyncEngine, failure: str
) -> None:
    service = await make_service(llm_base_url=llm.url, moderation="both", **FAST)
    if failure == "status":
        llm.moderation_status = 400  # not retried
    else:
        llm.moderation_delay = 5.0  # past MODERATION_TIMEOUT_SECONDS
    user = new_user()

    reply = await handled(service, msg(user, "forbidden but unchecked", f"{user}-ev-1"))

    assert reply.kind is ReplyKind.ANSWER and len(llm.requests) == 1
    assert len(await stored(engine, user)) == 2
    assert service.stats["moderation_error"] == 2  # the message and the reply


async def test_a_failing_endpoint_fails_closed_when_set(
    make_service: ServiceFactory, llm: LLMServer, engine: AsyncEngine
) -> None:
    service: ConversationService = await make_service(
        llm_base_url=llm.url, moderation="input", moderation_fail="closed", **FAST
    )
    llm.moderation_delay = 5.0
    user = new_user()

    reply = await handled(service, msg(user, "hello", f"{user}-ev-1"))

    assert (reply.kind, reply.text) == (ReplyKind.REFUSED, UNCHECKED_TEXT)
    assert llm.requests == [] and await stored(engine, user) == []


async def test_off_by_default_nothing_is_checked_and_replies_stream(
    make_service: ServiceFactory, llm: LLMServer
) -> None:
    service = await make_service(llm_base_url=llm.url)
    shown: list[str] = []

    async def sink(piece: str) -> None:
        shown.append(piece)

    reply = await service.handle(msg(new_user(), "a forbidden word"), on_text=sink)

    assert service.moderator is None and llm.moderations == []
    assert reply.kind is ReplyKind.ANSWER and shown


async def test_a_flagged_reply_to_a_message_stored_alone_is_stored_marked(
    make_service: ServiceFactory, llm: LLMServer, engine: AsyncEngine
) -> None:
    # A worker streaming replies (no output moderation) stores the message, then the LLM
    # fails for now: the message is kept alone and deferred. Another worker, moderating
    # replies, answers it later: its refusal is stored in place of the flagged reply,
    # marked, as on the usual path.
    timing = {"inbox_lease_seconds": 1.0, "inbox_sweep_seconds": 0.2, **FAST}
    first = await make_service(llm_base_url=llm.url, stream_replies=True, **timing)
    later = await make_service(llm_base_url=llm.url, moderation="output", **timing)
    user = new_user()
    message = msg(user, "tell me", f"{user}-1")
    llm.then(*[Step(status=503, body={"error": "down"})] * 8)

    async def show(piece: str) -> None:
        raise AssertionError(f"nothing was to be shown: {piece!r}")

    assert (await first.receive(message)).taken
    assert (await first.handle(message, show)).kind is ReplyKind.DEFERRED
    assert [r.role for r in await stored(engine, user)] == ["user"]  # stored alone

    llm.then(Step(text="a forbidden answer"))
    reply = None
    for _ in range(50):
        taken = await later.inbox.take(["console"], 10)
        if taken:
            reply = await later.handle(later.adopt(taken[0]))
            break
        await asyncio.sleep(0.1)

    assert reply is not None and reply.text == REFUSED_REPLY_TEXT
    rows = await stored(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "tell me"),
        ("assistant", REFUSED_REPLY_TEXT),
    ]
    assert rows[1].metadata.get("moderated") == "flagged"
