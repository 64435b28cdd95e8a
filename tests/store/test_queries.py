"""Store queries that race other processes (run-wide migrated database)."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.conversations import ConversationQueries
from tests.store.conftest import store_waits_for_a_lock
from tests.support import fetch, new_user


async def test_racing_resets_end_in_one_new_conversation(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    first = await store.load_session("console", new_user(), None)
    user = first.user_id

    # Another process resets too, and commits while ours waits for the row it closed.
    async with engine.connect() as other:
        await other.execute(
            text("UPDATE conversations SET is_active = false WHERE user_id = :u AND is_active"),
            {"u": user},
        )
        theirs = (
            await other.execute(
                text(
                    "INSERT INTO conversations (user_id, channel_type) "
                    "VALUES (:u, 'console') RETURNING id"
                ),
                {"u": user},
            )
        ).scalar_one()
        ours = asyncio.create_task(store.reset_conversation(user, "console"))
        await store_waits_for_a_lock(engine)
        await other.commit()

    session = await asyncio.wait_for(ours, timeout=10)

    assert session.user_id == user and session.conversation_id == theirs
    assert theirs != first.conversation_id
    active = await fetch(
        engine, "SELECT id FROM conversations WHERE user_id = :u AND is_active", u=user
    )
    assert [row.id for row in active] == [theirs]


async def test_a_turn_starts_in_one_statement_and_finds_what_it_opened(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    alice, bob, scope = new_user(), new_user(), f"chat:C{uuid.uuid4().hex[:6]}:thread:1"

    first = await store.start_turn("slack", alice, "Alice", "dm", False, 20)
    again = await store.start_turn("slack", alice, "Alice", "dm", False, 20)
    shared_a = await store.start_turn("slack", alice, "Alice", scope, True, 20)
    shared_b = await store.start_turn("slack", bob, None, scope, True, 20)

    assert first is not None and again is not None and shared_a is not None and shared_b
    assert first.session == again.session
    assert first.context.messages == [] and first.context.last_id is None
    assert shared_a.session.conversation_id == shared_b.session.conversation_id
    assert shared_a.session.conversation_id != first.session.conversation_id
    assert shared_b.session.user_id != shared_a.session.user_id  # who writes, each time
    rows = await fetch(engine, "SELECT user_id FROM conversations WHERE scope = :s", s=scope)
    assert [row.user_id for row in rows] == [None]  # the shared one is nobody's own


async def test_a_turn_start_racing_another_gives_way(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    carol = new_user()
    first = await store.start_turn("console", carol, None, "dm", False, 20)
    assert first is not None
    scope = "chat:-1:thread:7"
    async with engine.connect() as other:  # opens the same conversation first, uncommitted
        await other.execute(
            text(
                "INSERT INTO conversations (user_id, channel_type, scope) "
                "VALUES (:u, 'console', :s)"
            ),
            {"u": first.session.user_id, "s": scope},
        )
        racing = asyncio.create_task(store.start_turn("console", carol, None, scope, False, 20))
        await store_waits_for_a_lock(engine)  # its insert waits on the unique index
        await other.commit()
        started = await racing

    assert started is None  # the caller takes the path of several statements instead
    session = await store.load_session("console", carol, None, scope)
    rows = await fetch(
        engine, "SELECT id FROM conversations WHERE scope = :s AND is_active", s=scope
    )
    assert [row.id for row in rows] == [session.conversation_id]
