"""Exactly-once storage on the partitioned messages table (revision 0007): a platform
event's claim (message_events) and a user message's reply claim (message_replies) go in
before their message, in the same statement, so Postgres stores neither twice even when
nothing else (Redis, the fence) stops a second handling."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.conversations import ConversationQueries
from tests.store.test_turn_fence import exchange, newest, reply_to
from tests.support import execute, fetch, new_user


async def test_a_redelivered_event_on_the_newest_context_is_stored_once(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    session = await store.load_session("console", new_user(), None)
    event = f"evt-{uuid.uuid4().hex}"
    first = replace(exchange(session, None), platform_message_id=event)
    assert not (await store.save_exchange(first)).duplicate

    # Redis forgot the event and the second handling read the context after the first:
    # the fence lets it through, only the claim stops it.
    later = datetime.now(UTC) + timedelta(seconds=1)
    again = replace(
        exchange(session, await newest(engine, session)),
        platform_message_id=event,
        user_ts=later,
        reply_ts=later,
    )
    stored = await store.save_exchange(again)

    assert stored.duplicate and stored.user_message_id == first.user_message_id
    assert stored.reply_text == "reply"
    rows = await fetch(
        engine,
        "SELECT count(*) AS n FROM messages WHERE platform_message_id = :e",
        e=event,
    )
    assert rows[0].n == 1


async def test_a_second_reply_to_one_user_message_is_refused_by_its_claim(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    session = await store.load_session("console", new_user(), None)
    asked = exchange(session, None, reply=None, hold=30)
    await store.save_exchange(asked)
    assert await store.save_reply(reply_to(asked))

    # A fault puts the fence back on the user message: the claim still refuses.
    await execute(
        engine,
        "UPDATE conversations SET last_message_id = :m WHERE id = :c",
        m=asked.user_message_id,
        c=session.conversation_id,
    )
    assert not await store.save_reply(reply_to(asked))

    replies = await fetch(
        engine, "SELECT count(*) AS n FROM messages WHERE reply_to = :m", m=asked.user_message_id
    )
    assert replies[0].n == 1
