"""Store queries that race other processes (run-wide migrated database)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.store.conversations import ConversationQueries
from bot.store.database import Database
from bot.store.engine import create_engine
from bot.store.retry import DatabaseRetry
from tests.support import fetch, new_user

APPLICATION = f"test-queries-{uuid.uuid4().hex[:8]}"  # to watch the store's sessions wait


@pytest.fixture
async def store(make_settings: Callable[..., Settings]) -> AsyncIterator[ConversationQueries]:
    settings = make_settings(db_application_name=APPLICATION)
    assert settings.database_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value())
    yield ConversationQueries(Database(engine, DatabaseRetry(3, 10)))
    await engine.dispose()


async def store_waits_for_a_lock(engine: AsyncEngine) -> None:
    async with asyncio.timeout(10):
        while True:
            waiting = await fetch(
                engine,
                "SELECT 1 FROM pg_stat_activity "
                "WHERE application_name = :a AND wait_event_type = 'Lock'",
                a=APPLICATION,
            )
            if waiting:
                return
            await asyncio.sleep(0.02)


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
