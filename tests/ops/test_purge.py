"""`bot ops purge`: retention in short batches, with rows other transactions hold."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.cache.keys import Keys
from bot.service import ConversationService
from tests.ops.conftest import Ops, execute, seed
from tests.support import ServiceFactory, fetch, messages_of, msg, new_user

pytestmark = pytest.mark.timeout(15)

PURGE = ("purge", "--older-than", "900d", "--yes", "--json")
SMALL_BATCHES = {"PURGE_BATCH_SIZE": "2"}


async def age_messages(engine: AsyncEngine, conversation: uuid.UUID) -> None:
    await execute(
        engine,
        "UPDATE messages SET timestamp = now() - interval '1000 days' WHERE conversation_id = :c",
        c=conversation,
    )


async def old_messages(engine: AsyncEngine, conversation: uuid.UUID) -> int:
    rows = await fetch(
        engine,
        "SELECT count(*) FROM messages WHERE conversation_id = :c "
        "AND timestamp < now() - interval '900 days'",
        c=conversation,
    )
    return int(rows[0][0])


async def lock_one_message(connection: AsyncConnection, conversation: uuid.UUID) -> None:
    """Hold one of the conversation's messages locked, as a transaction in flight would."""
    await connection.begin()
    await connection.execute(
        text("SELECT id FROM messages WHERE conversation_id = :c LIMIT 1 FOR UPDATE"),
        {"c": conversation},
    )


async def test_purge_dry_run_then_purge_in_batches(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine, redis: Redis, keys: Keys
) -> None:
    service = await make_service()
    old, current = new_user(), new_user()
    old_conversation = await seed(service, old, "a", "b", "c")  # 6 messages
    await service.handle(msg(old, "/reset"))  # closes it: inactive, will be left empty
    kept_active = await seed(service, current, "x", "y")  # 4 messages
    await execute(
        engine,
        """UPDATE messages SET timestamp = now() - interval '1000 days'
           WHERE conversation_id = :old OR (conversation_id = :active AND content = 'x')""",
        old=old_conversation, active=kept_active,
    )  # fmt: skip
    await execute(
        engine,
        "UPDATE conversations SET last_activity = now() - interval '999 days' WHERE id = :id",
        id=old_conversation,
    )
    batch = {"PURGE_BATCH_SIZE": "4"}
    assert await redis.exists(keys.context(old_conversation), keys.context(kept_active)) == 2

    dry = (await ops("purge", "--older-than", "900d", "--dry-run", "--json", **batch)).data
    assert dry["dry_run"] is True
    assert dry["postgres"] == {"messages": 7, "conversations": 1}
    assert dry["redis"] == {"context": 2}
    assert len(await messages_of(engine, old)) == 6  # nothing changed

    ran = (await ops(*PURGE, **batch)).data

    assert ran["dry_run"] is False and ran["skipped"] == {}
    assert ran["postgres"] == {"messages": 7, "conversations": 1}
    assert ran["redis"] == {"context": 2}
    assert await messages_of(engine, old) == []
    assert (
        await fetch(engine, "SELECT 1 FROM conversations WHERE id = :id", id=old_conversation) == []
    )
    kept = [m.content for m in await messages_of(engine, current)]
    assert len(kept) == 3 and "x" not in kept and "y" in kept
    assert await redis.exists(keys.context(old_conversation), keys.context(kept_active)) == 0
    # The active user goes on; the context is rebuilt from what Postgres kept.
    reply = await service.handle(msg(current, "z"))
    assert reply.conversation_id == kept_active and "(3 earlier" in (reply.text or "")

    again = (await ops(*PURGE)).data
    assert again["postgres"] == {"messages": 0, "conversations": 0}


async def test_purge_waits_for_a_row_another_transaction_holds(
    ops: Ops, service: ConversationService, engine: AsyncEngine
) -> None:
    conversation = await seed(service, new_user(), "a", "b", "c")  # 6 messages
    await age_messages(engine, conversation)

    async with engine.connect() as holder:
        await lock_one_message(holder, conversation)
        purge = asyncio.create_task(ops(*PURGE, "--lock-wait", "60", **SMALL_BATCHES))
        while await old_messages(engine, conversation) > 1:  # the others are gone ...
            assert not purge.done(), purge.result()
            await asyncio.sleep(0.05)
        await holder.rollback()  # ... then the transaction ends and lets go of its row
        ran = (await purge).data

    assert ran["postgres"]["messages"] == 6 and ran["skipped"] == {}
    assert await old_messages(engine, conversation) == 0


async def test_purge_reports_rows_still_locked_when_the_wait_runs_out(
    ops: Ops, service: ConversationService, engine: AsyncEngine
) -> None:
    conversation = await seed(service, new_user(), "a", "b", "c")
    await age_messages(engine, conversation)

    async with engine.connect() as holder:
        await lock_one_message(holder, conversation)
        held = await ops(*PURGE, "--lock-wait", "0.3", **SMALL_BATCHES)
        await holder.rollback()

    assert held.data["postgres"]["messages"] == 5
    assert held.data["skipped"] == {"messages": 1}
    [warning] = held.data["warnings"]
    assert "stayed locked by other transactions for 0.3 s and were not purged" in warning
    assert "(messages: 1)" in warning
    assert "run the purge again later" in held.err
    assert await old_messages(engine, conversation) == 1
    assert (await ops(*PURGE)).data["postgres"]["messages"] == 1  # now it can go
    assert await old_messages(engine, conversation) == 0


@pytest.mark.parametrize("age", ["90", "0d", "-1d", "ninety days", "5y"])
async def test_purge_refuses_a_bad_age(ops: Ops, age: str) -> None:
    ran = await ops("purge", f"--older-than={age}", "--dry-run")
    assert ran.code == 2 and "is not a duration" in ran.err, ran
