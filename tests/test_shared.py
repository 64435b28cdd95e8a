"""Shared conversations: everyone in a group or thread talks in one conversation, each
message keeps its writer, the context says who said what, and messages written at the
same moment by two members (two worker processes) are stored once, in order, each
answered with the other's where it came first."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.chat_configs import ChatConfigCache, Place
from bot.chat_configs import change_chat_config
from bot.config import Settings
from bot.domain import ChatKind, IncomingMessage, ReplyKind
from bot.service import ConversationService
from tests.support import (
    CountingResponder,
    ServiceFactory,
    fetch,
    flush_cache,
    new_user,
    run_together,
)


def said(
    channel: str, user: str, text: str, chat: str, thread: str | None = None
) -> IncomingMessage:
    return IncomingMessage(
        channel, user, text, username=f"name-{user}", platform_message_id=uuid.uuid4().hex,
        chat_id=chat, thread_id=thread, chat_kind=ChatKind.THREAD if thread else ChatKind.GROUP,
    )  # fmt: skip


async def stored(engine: AsyncEngine, conversation: uuid.UUID) -> list[Any]:
    return await fetch(
        engine,
        """SELECT m.role, m.content, u.channel_user_id AS author, c.user_id
           FROM messages m JOIN conversations c ON c.id = m.conversation_id
           LEFT JOIN users u ON u.id = m.author_id
           WHERE m.conversation_id = :c ORDER BY m.timestamp""",
        c=conversation,
    )


async def test_a_slack_thread_is_one_conversation_that_says_who_said_what(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    responder = CountingResponder()
    service = await make_service(responder=responder)
    alice, bob, thread = new_user(), new_user(), f"{uuid.uuid4().int % 10**6}.000100"

    first = await service.handle(said("slack", alice, "I like tea", "C1", thread))
    second = await service.handle(said("slack", bob, "and I coffee", "C1", thread))
    assert await flush_cache(service) > 0
    third = await service.handle(said("slack", alice, "what do we like?", "C1", thread))

    assert first.conversation_id == second.conversation_id == third.conversation_id
    seen = responder.calls[-1]
    assert seen.author == f"name-{alice}"
    assert [(m.author, m.content) for m in seen.context if m.role == "user"] == [
        (f"name-{alice}", "I like tea"),
        (f"name-{bob}", "and I coffee"),
    ]  # rebuilt from Postgres with the writers
    rows = await stored(engine, first.conversation_id)  # type: ignore[arg-type]
    assert [r.author for r in rows if r.role == "user"] == [alice, bob, alice]
    assert {r.user_id for r in rows} == {None}  # the conversation is nobody's own


async def test_a_telegram_group_is_per_user_unless_the_chat_says_shared(
    service: ConversationService,
) -> None:
    chat, carol, dave = f"-100{uuid.uuid4().int % 10**9}", new_user(), new_user()
    apart = [await service.handle(said("telegram", u, "hi", chat)) for u in (carol, dave)]
    cache = ChatConfigCache(service.cache.redis, service.cache.keys, service.cache.guard)
    place = Place("telegram", chat)
    await change_chat_config(
        service.store.chat_configs, cache, place, {"conversation_mode": "shared"}, []
    )
    service.chats.forget()  # this worker runs no listener: as if it heard the change

    together = [await service.handle(said("telegram", u, "again", chat)) for u in (carol, dave)]
    history = await service.handle(said("telegram", carol, "/history", chat))

    assert apart[0].conversation_id != apart[1].conversation_id
    assert together[0].conversation_id == together[1].conversation_id
    assert f"name-{dave}: again" in (history.text or "")


async def test_reset_in_a_shared_thread_starts_afresh_for_everyone(
    service: ConversationService,
) -> None:
    erin, frank, thread = new_user(), new_user(), "9.000001"
    before = await service.handle(said("discord", erin, "hello", "D1", thread))
    reset = await service.handle(said("discord", frank, "/reset", "D1", thread))
    after = await service.handle(said("discord", erin, "hello again", "D1", thread))

    assert reset.kind is ReplyKind.COMMAND
    assert after.conversation_id != before.conversation_id
    assert "0 earlier messages" in (after.text or "")


def race(settings: Settings, chat: str, thread: str, people: dict[str, list[str]]) -> list[Any]:
    commands = [
        ["tests.concurrent_shared_client", chat, thread, person, *texts]
        for person, texts in people.items()
    ]
    return run_together(settings, commands, 120.0)


async def test_two_members_writing_at_once_in_two_workers(
    settings: Settings, engine: AsyncEngine
) -> None:
    thread = f"{uuid.uuid4().int % 10**6}.000200"
    people = {new_user(): [f"a{n}" for n in range(3)], new_user(): [f"b{n}" for n in range(3)]}

    results = await asyncio.to_thread(race, settings, "C2", thread, people)

    replies = [reply for result in results for reply in result]
    assert [kind for kind, _ in replies] == ["answer"] * 6, replies
    conversations = await fetch(
        engine, "SELECT id FROM conversations WHERE scope = :s AND is_active",
        s=f"chat:C2:thread:{thread}",
    )  # fmt: skip
    assert len(conversations) == 1
    rows = await stored(engine, conversations[0].id)
    asked = [r.content for r in rows if r.role == "user"]
    assert sorted(asked) == sorted(t for texts in people.values() for t in texts)  # each once
    for question, answer in zip(rows[::2], rows[1::2], strict=True):  # in order, answered once
        assert (question.role, answer.role) == ("user", "assistant")
        assert answer.content.startswith(f'You said: "{question.content}"')
    earlier = [int(r.content.split("(")[1].split()[0]) for r in rows[1::2]]
    assert earlier == [2 * n for n in range(6)]  # each saw every message before it
    assert {r.author for r in rows if r.role == "user"} == set(people)
