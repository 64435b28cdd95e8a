"""The turn's fence in Postgres (revision 0006): a message is stored only on the context
it was answered with, and not while another handling streams a reply. What keeps a
conversation in order when Redis forgot the turn's lock (DESIGN.md, invariant 9)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import SessionState
from bot.errors import TurnConflict
from bot.store.conversations import ConversationQueries, ExchangeRows, ReplyRow
from tests.store.conftest import store_waits_for_a_lock
from tests.support import execute, fetch, new_user


def exchange(
    session: SessionState,
    seen: uuid.UUID | None,
    reply: str | None = "reply",
    hold: float | None = None,
    model: str | None = None,
) -> ExchangeRows:
    now = datetime.now(UTC)
    return ExchangeRows(
        conversation_id=session.conversation_id,
        channel="console",
        platform_message_id=None,
        user_text="hello",
        user_ts=now,
        user_tokens=1,
        reply_text=reply,
        reply_ts=now + timedelta(microseconds=1),
        reply_tokens=1 if reply else None,
        model_used=None,
        user_message_id=uuid.uuid4(),
        reply_id=uuid.uuid4(),
        seen=seen,
        hold_seconds=hold,
        session_model=model,
    )


def reply_to(rows: ExchangeRows) -> ReplyRow:
    return ReplyRow(
        conversation_id=rows.conversation_id,
        user_message_id=rows.user_message_id,
        reply_id=uuid.uuid4(),
        channel=rows.channel,
        text="streamed",
        ts=datetime.now(UTC),
        tokens=1,
        model_used=None,
    )


async def newest(engine: AsyncEngine, session: SessionState) -> uuid.UUID | None:
    rows = await fetch(
        engine,
        "SELECT last_message_id FROM conversations WHERE id = :c",
        c=session.conversation_id,
    )
    return rows[0].last_message_id


async def count(engine: AsyncEngine, session: SessionState) -> int:
    rows = await fetch(
        engine, "SELECT count(*) AS n FROM messages WHERE conversation_id = :c",
        c=session.conversation_id,
    )  # fmt: skip
    return int(rows[0].n)


async def test_a_message_goes_in_only_on_the_context_it_was_answered_with(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    session = await store.load_session("console", new_user(), None)
    first = exchange(session, seen=None)
    await store.save_exchange(first)
    assert await newest(engine, session) == first.reply_id

    with pytest.raises(TurnConflict) as raised:
        await store.save_exchange(exchange(session, seen=None))  # read before `first`
    assert not raised.value.held
    assert await count(engine, session) == 2  # nothing of it went in

    second = exchange(session, seen=first.reply_id)
    await store.save_exchange(second)
    assert await newest(engine, session) == second.reply_id
    recent = await store.load_context(session.conversation_id, 10)
    assert recent.last_id == second.reply_id
    assert [m.role for m in recent.messages] == ["assistant", "user"] * 2


async def test_a_session_older_than_a_model_choice_is_fenced_too(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    """A cached session that lacks the model chosen since (a Redis restored from an
    older snapshot) is caught by the same statement: nothing else had changed."""
    session = await store.load_session("console", new_user(), None)
    chosen = await store.set_preferred_model(session, "gpt-4o")
    assert chosen.model == "gpt-4o"
    with pytest.raises(TurnConflict):
        await store.save_exchange(exchange(session, seen=None))  # the session of before
    assert await count(engine, session) == 0
    await store.save_exchange(exchange(chosen, seen=None, model=chosen.model))

    pinned = await store.set_model_override(chosen, "gpt-4.1")  # the conversation's wins
    newest_id = await newest(engine, session)
    with pytest.raises(TurnConflict):
        await store.save_exchange(exchange(pinned, seen=newest_id, model="gpt-4o"))
    await store.save_exchange(exchange(pinned, seen=newest_id, model="gpt-4.1"))
    assert await count(engine, session) == 4


async def test_a_retried_commit_is_recognised_as_its_own_not_as_a_conflict(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    session = await store.load_session("console", new_user(), None)
    rows = exchange(session, seen=None)
    await store.save_exchange(rows)
    again = await store.save_exchange(rows)  # its answer was lost: the same rows again
    assert again.user_message_id == rows.user_message_id and not again.duplicate
    assert await count(engine, session) == 2


async def test_a_streamed_reply_holds_the_turn_until_it_is_stored(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    session = await store.load_session("console", new_user(), None)
    streamed = exchange(session, seen=None, reply=None, hold=30)
    await store.save_exchange(streamed)
    assert await newest(engine, session) == streamed.user_message_id

    # Even on the newest context, nobody goes in while the reply is being written.
    with pytest.raises(TurnConflict) as raised:
        await store.save_exchange(exchange(session, seen=streamed.user_message_id))
    assert raised.value.held

    assert await store.hold_turn(session.conversation_id, streamed.user_message_id, 30)
    reply = reply_to(streamed)
    assert await store.save_reply(reply)
    assert await store.save_reply(reply)  # a retry of a lost answer: its own, stored
    assert await newest(engine, session) == reply.reply_id
    await store.save_exchange(exchange(session, seen=reply.reply_id))
    assert await count(engine, session) == 4


async def test_a_turn_given_back_without_a_reply_lets_the_next_message_in(
    store: ConversationQueries,
) -> None:
    session = await store.load_session("console", new_user(), None)
    streamed = exchange(session, seen=None, reply=None, hold=30)
    await store.save_exchange(streamed)
    assert await store.hold_turn(session.conversation_id, streamed.user_message_id, None)
    stored = await store.save_exchange(exchange(session, seen=streamed.user_message_id))
    assert not stored.duplicate


async def test_a_lapsed_hold_is_overtaken_and_the_stalled_reply_is_not_stored(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    session = await store.load_session("console", new_user(), None)
    stalled = exchange(session, seen=None, reply=None, hold=30)
    await store.save_exchange(stalled)
    await execute(
        engine,
        "UPDATE conversations SET reply_due = now() - interval '1 second' WHERE id = :c",
        c=session.conversation_id,
    )  # its worker stopped renewing (it stalled, or died)

    later = exchange(session, seen=stalled.user_message_id)
    await store.save_exchange(later)

    assert not await store.save_reply(reply_to(stalled))
    assert not await store.hold_turn(session.conversation_id, stalled.user_message_id, 30)
    assert await newest(engine, session) == later.reply_id
    assert await count(engine, session) == 3  # the stalled reply is nowhere


async def test_racing_writers_of_one_context_store_one_exchange(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    session = await store.load_session("console", new_user(), None)
    first = exchange(session, seen=None)
    await store.save_exchange(first)
    mine, theirs = exchange(session, first.reply_id), exchange(session, first.reply_id)

    # Another worker stores its exchange on the same context and commits while ours
    # waits for the conversation's row: ours must see what they stored, not its snapshot.
    async with engine.connect() as other:
        await other.execute(
            text("UPDATE conversations SET last_message_id = :r WHERE id = :c"),
            {"r": theirs.reply_id, "c": session.conversation_id},
        )
        saving = asyncio.ensure_future(store.save_exchange(mine))
        await store_waits_for_a_lock(engine)
        await other.execute(
            text(
                "INSERT INTO messages (id, conversation_id, role, content, channel_type) "
                "VALUES (:r, :c, 'assistant', 'theirs', 'console')"
            ),
            {"r": theirs.reply_id, "c": session.conversation_id},
        )
        await other.commit()
    with pytest.raises(TurnConflict):
        await saving
    assert await newest(engine, session) == theirs.reply_id
    assert await count(engine, session) == 3


async def test_the_fence_survives_the_newest_message_being_purged(
    store: ConversationQueries, engine: AsyncEngine
) -> None:
    session = await store.load_session("console", new_user(), None)
    first = exchange(session, seen=None)
    await store.save_exchange(first)
    await execute(engine, "DELETE FROM messages WHERE conversation_id = :c",
                  c=session.conversation_id)  # fmt: skip

    recent = await store.load_context(session.conversation_id, 10)
    assert recent.messages == [] and recent.last_id == first.reply_id
    stored = await store.save_exchange(exchange(session, seen=recent.last_id))
    assert not stored.duplicate
