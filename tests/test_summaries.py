"""Summaries of long conversations (bot/summaries.py), end to end: real Postgres and
Redis, the local LLM server (which records each request) or the echo responder."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.codec import decode_cached_context
from bot.domain import ContextMessage, RecentContext, ReplyKind
from bot.emulators.llm_api import LLMServer, Step
from bot.responders.base import ResponderRequest
from bot.responders.openai_compat import SUMMARY_LEAD, LLMOptions, build_messages
from bot.service import ConversationService
from bot.store.summaries import SummaryRow
from bot.tallies import Tally
from tests.support import ServiceFactory, fetch, flush_cache, handled, messages_of, msg, new_user

pytestmark = pytest.mark.timeout(60)

# A window of 8 messages: the fourth exchange fills it, and a summary then covers the
# two oldest exchanges, keeping the two newest.
SUMMARIES: dict[str, Any] = {"summary_enabled": True, "context_messages": 8}
ASKS_SUMMARY = "Summarise the conversation"  # in the default SUMMARY_PROMPT


async def summaries_in(engine: AsyncEngine, conversation: uuid.UUID) -> list[Any]:
    return await fetch(
        engine,
        """SELECT id, content, metadata, timestamp FROM messages
           WHERE conversation_id = :c AND role = 'system' ORDER BY timestamp""",
        c=conversation,
    )


async def talk(service: ConversationService, user: str, *texts: str) -> uuid.UUID:
    """Send the texts in turn; the conversation they went to."""
    conversation = None
    for text in texts:
        reply = await handled(service, msg(user, text))
        assert reply.kind is ReplyKind.ANSWER, reply
        conversation = reply.conversation_id
    assert conversation is not None
    return conversation


def request_for(llm: LLMServer, text: str) -> list[dict[str, Any]]:
    """The messages of the (one) reply request whose newest message is `text`."""
    found = [r["messages"] for r in llm.requests if r["messages"][-1]["content"] == text]
    assert len(found) == 1, found
    return found[0]


def summary_requests(llm: LLMServer) -> list[str]:
    """The transcripts sent to be summarised."""
    return [r["messages"][1]["content"] for r in llm.requests if ASKS_SUMMARY in str(r)]


async def cached_context(service: ConversationService, user: str, conversation: uuid.UUID) -> Any:
    keys, redis = service.cache.keys, service.cache.redis
    session = keys.session("console", user)
    flat = [part for pair in (await redis.hgetall(session)).items() for part in pair]
    items = await redis.lrange(keys.context_of(session, conversation), 0, -1)
    return decode_cached_context(flat, "[" + ",".join(i.decode() for i in items) + "]")


def shape(context: RecentContext) -> list[tuple[str, str, int | None]]:
    return [(m.role, m.content, m.summary_of) for m in context.messages]


async def test_a_long_conversation_is_summarised_and_its_next_request_carries_the_summary(
    make_service: ServiceFactory, engine: AsyncEngine, llm: LLMServer
) -> None:
    llm.when(ASKS_SUMMARY, Step(text="SUMMARY-ONE"))
    service = await make_service(llm_base_url=llm.url, **SUMMARIES)
    user = new_user()

    conversation = await talk(service, user, "m0", "m1", "m2", "m3")
    await service.summaries.drain(10)

    assert service.stats[Tally.SUMMARISED] == 1
    [transcript] = summary_requests(llm)
    assert "User: m0\nAssistant: LLM reply to: m0\nUser: m1\nAssistant: LLM reply to: m1" in (
        transcript
    )
    assert "m2" not in transcript  # the newest two exchanges are kept as they are
    [summary] = await summaries_in(engine, conversation)
    assert summary.content == "SUMMARY-ONE"
    assert summary.metadata["summary"] is True and summary.metadata["covers"] == 4
    rows = [r for r in await messages_of(engine, user) if r.role != "system"]
    covered_until = next(r for r in rows if r.content == "LLM reply to: m1")
    assert covered_until.timestamp < summary.timestamp < rows[4].timestamp  # in its place

    await talk(service, user, "m4")
    asked = request_for(llm, "m4")
    assert [m["role"] for m in asked[:2]] == ["system", "system"]
    assert asked[1]["content"].endswith("SUMMARY-ONE")
    assert [m["content"] for m in asked[2:]] == [
        "m2", "LLM reply to: m2", "m3", "LLM reply to: m3", "m4"
    ]  # fmt: skip

    # Nothing is lost from Postgres: every message is still there, in order.
    rows = await messages_of(engine, user)
    said = [r.content for r in rows if r.role == "user"]
    assert said == ["m0", "m1", "m2", "m3", "m4"]
    assert [r.content for r in rows if r.role == "assistant"] == [
        f"LLM reply to: {t}" for t in said
    ]

    # Redis holds the context Postgres gives, summary and all; flushed, it is rebuilt.
    cached = await cached_context(service, user, conversation)
    stored = await service.store.conversations.load_context(conversation, 8)
    assert cached is not None and shape(cached) == shape(stored)
    assert stored.summary is not None and stored.summary.content == "SUMMARY-ONE"
    await flush_cache(service)
    await talk(service, user, "m5")
    asked = request_for(llm, "m5")
    assert asked[1]["content"].endswith("SUMMARY-ONE")
    assert [m["content"] for m in asked[2:-1]] == [
        m.content for m in reversed(stored.messages[:-1])
    ]

    # That turn filled the window again: the next summary continues the first.
    await service.summaries.drain(10)
    first, second = await summaries_in(engine, conversation)
    assert second.metadata["covers"] == 8 and second.metadata["continues"] == str(first.id)
    assert summary_requests(llm)[1].startswith("Summary so far: SUMMARY-ONE\n")
    await service.close()


async def test_a_slow_summary_never_delays_a_reply(
    make_service: ServiceFactory, engine: AsyncEngine, llm: LLMServer
) -> None:
    llm.when(ASKS_SUMMARY, Step(text="SLOW-SUMMARY", delay=3.0))
    service = await make_service(llm_base_url=llm.url, **SUMMARIES)
    user = new_user()
    conversation = await talk(service, user, "m0", "m1", "m2", "m3")
    assert service.summaries.running == 1

    started = time.monotonic()
    await talk(service, user, "m4")

    assert time.monotonic() - started < 1.5
    assert service.summaries.running == 1  # still summarising
    asked = request_for(llm, "m4")  # on the whole context: the summary is not there yet
    assert [m["content"] for m in asked[1:]][:2] == ["m0", "LLM reply to: m0"]
    await service.summaries.drain(10)
    [summary] = await summaries_in(engine, conversation)
    assert summary.content == "SLOW-SUMMARY"
    await service.close()


async def test_a_turn_racing_a_summary_is_stored_on_the_context_it_read(
    make_service: ServiceFactory, engine: AsyncEngine, llm: LLMServer
) -> None:
    """The summary is stored while a turn that read the context before it waits for its
    reply: the turn is stored all the same (the summary leaves the fence alone), and the
    next turn reads the summary and every message after what it covers, the racing
    turn's included."""
    llm.when(ASKS_SUMMARY, Step(text="SUMMARY-RACED", delay=0.3))
    llm.when("racing", Step(delay=1.5))
    service = await make_service(llm_base_url=llm.url, **SUMMARIES)
    user = new_user()
    conversation = await talk(service, user, "m0", "m1", "m2", "m3")

    await talk(service, user, "racing")

    [summary] = await summaries_in(engine, conversation)  # stored while "racing" waited
    stored = [r for r in await messages_of(engine, user) if r.role != "system"]
    assert summary.timestamp < stored[-1].timestamp
    assert service.stats[Tally.TURN_CONFLICT] == 0
    await talk(service, user, "after")
    asked = request_for(llm, "after")
    assert asked[1]["content"].endswith("SUMMARY-RACED")
    assert [m["content"] for m in asked[2:]] == [
        "m2", "LLM reply to: m2", "m3", "LLM reply to: m3",
        "racing", "LLM reply to: racing", "after",
    ]  # fmt: skip
    await service.close()


async def test_the_echo_responder_summarises_offline_and_history_shows_it(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(**SUMMARIES)
    user = new_user()
    conversation = await talk(service, user, "m0", "m1", "m2", "m3")
    await service.summaries.drain(10)

    [summary] = await summaries_in(engine, conversation)
    assert summary.content.startswith('user: m0; assistant: You said: "m0" (0 earlier')
    assert "user: m1;" in summary.content and "m2" not in summary.content
    reply = await handled(service, msg(user, "m4"))
    assert "(4 earlier messages after a summary of 4 in my context" in (reply.text or "")

    history = await handled(service, msg(user, "/history 5"))
    lines = (history.text or "").splitlines()
    assert "[summary of 4 earlier messages] user: m0;" in lines[0]
    assert lines[1].endswith("you: m2") and len(lines) == 7
    newest = await handled(service, msg(user, "/history 1"))
    assert "[summary of" not in (newest.text or "") and len((newest.text or "").splitlines()) == 2
    await handled(service, msg(user, "/reset"))  # a new conversation: nothing of the old one
    fresh = await handled(service, msg(user, "hello"))
    assert "(0 earlier messages in my context" in (fresh.text or "")
    await service.close()


async def test_one_summary_at_a_time_whatever_the_workers(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    quiet = await make_service(context_messages=8)  # summaries off: none is made
    user = new_user()
    conversation = await talk(quiet, user, "m0", "m1", "m2", "m3", "m4")
    assert await summaries_in(engine, conversation) == []
    workers = [await make_service(**SUMMARIES) for _ in range(3)]
    context = await quiet.store.conversations.load_context(conversation, 8)

    for worker in workers:  # each finds it due at once, as after a turn of its own
        worker.summaries.consider(msg(user, "m4"), False, conversation, "m", context.messages)
    await asyncio.gather(*(worker.summaries.drain(10) for worker in workers))

    [summary] = await summaries_in(engine, conversation)
    assert summary.metadata["covers"] == 6
    # A summary continuing a base that is not the latest any more is refused.
    found = await quiet.store.summaries.uncovered(conversation, 200)
    late = SummaryRow(
        id=uuid.uuid4(),
        conversation_id=conversation,
        base=None,
        channel="console",
        content="late",
        timestamp=found.messages[0].message.timestamp,
        covers=2,
        covers_until=found.messages[0],
        model_used="m",
        completion_tokens=1,
        prompt_tokens=1,
    )
    assert not await quiet.store.summaries.save(late)
    assert len(await summaries_in(engine, conversation)) == 1
    for worker in workers:
        await worker.close()


async def test_summaries_are_off_by_default(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(context_messages=4)
    user = new_user()
    conversation = await talk(service, user, *(f"m{n}" for n in range(6)))
    assert service.summaries.running == 0
    assert await summaries_in(engine, conversation) == []
    assert not {Tally.SUMMARISED, Tally.SUMMARY_SKIPPED, Tally.SUMMARY_FAILED} & set(service.stats)


def test_the_summary_is_always_sent_and_the_messages_after_it_fill_the_room_left() -> None:
    options = LLMOptions(
        base_url="http://127.0.0.1:9/v1",
        api_key=None,
        timeout=1.0,
        deadline=1.0,
        connect_attempts=1,
        max_concurrency=1,
        max_tokens=16,
        temperature=None,
        context_token_budget=5 + 1 + 10 + 20,  # prompt, message, summary, two messages
        system_prompt="S" * 20,
    )
    now = datetime.now(UTC)
    summary = ContextMessage("system", "s" * 40, now, summary_of=6)
    said = [ContextMessage("user", f"{n}" * 40, now) for n in range(4)]
    request = ResponderRequest(model="m", text="q" * 4, context=[summary, *said], channel="x")

    sent = build_messages(request, options)

    assert [m["content"] for m in sent] == [
        "S" * 20, SUMMARY_LEAD + "s" * 40, "2" * 40, "3" * 40, "q" * 4
    ]  # fmt: skip
