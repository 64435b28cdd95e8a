"""A worker that crashes or stalls mid-message (DESIGN invariant 2): whoever takes the
user's lock next takes over its claim, and the exchange is still stored exactly once."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.state import BeginStatus
from bot.domain import ReplyKind
from tests.support import (
    GatedResponder,
    ServiceFactory,
    free_port,
    handled,
    messages_of,
    msg,
    new_user,
)

# A short lock, so that a lock nobody renews runs out within the test.
SHORT_LOCK = {"lock_ttl_seconds": 1, "lock_wait_seconds": 20}


async def test_redelivery_after_a_crash_mid_message_is_answered_and_stored_once(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    crashed = await make_service(**SHORT_LOCK)
    survivor = await make_service(**SHORT_LOCK)
    keys = survivor.cache.keys
    user = new_user()
    event = msg(user, "are you there?", pid=f"{user}:1")
    # The crashed worker took the user's lock and claimed the event, then died: nothing
    # renews its lock, nothing finishes its claim.
    assert (await crashed.cache.claims.begin(event, "token-of-the-dead")).status is BeginStatus.OK
    assert await redis.get(keys.dedup("console", f"{user}:1")) == b"processing"

    redelivered = await asyncio.wait_for(handled(survivor, event), timeout=30)
    again = await survivor.handle(event)
    await survivor.cache.flush_delivered()

    assert redelivered.kind is ReplyKind.ANSWER, redelivered
    assert again.kind is ReplyKind.DUPLICATE and again.text is None
    rows = await messages_of(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "are you there?"),
        ("assistant", redelivered.text),
    ]
    assert await redis.get(keys.dedup("console", f"{user}:1")) == b"done"
    assert not await redis.exists(keys.lock("console", user))


class DyingAfterCommit(Exception):
    """Raised by the cache's settle: the worker dies between the commit and the reply."""


async def test_a_worker_that_died_after_its_commit_has_the_stored_reply_sent_once(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    dying = await make_service(**SHORT_LOCK)
    survivor = await make_service(**SHORT_LOCK)
    user = new_user()
    event = msg(user, "did you get this?", pid=f"{user}:1")

    async def die(*args: object, **kwargs: object) -> None:
        raise DyingAfterCommit  # its lock and its 'processing' claim stay behind

    dying.cache.claims.settle = die  # type: ignore[method-assign]
    with pytest.raises(DyingAfterCommit):
        await dying.handle(event)
    stored = await messages_of(engine, user)
    assert [r.role for r in stored] == ["user", "assistant"]  # committed, never sent

    redelivered = await asyncio.wait_for(handled(survivor, event), timeout=30)
    again = await survivor.handle(event)

    assert redelivered.kind is ReplyKind.ANSWER and redelivered.text == stored[1].content
    assert again.kind is ReplyKind.DUPLICATE and again.text is None
    assert len(await messages_of(engine, user)) == 2  # nothing stored twice
    assert survivor.stats["reply_resent"] == 1


async def test_a_stalled_holder_and_its_successor_store_the_event_once(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    gate = GatedResponder()
    stalled = await make_service(responder=gate, **SHORT_LOCK)
    successor = await make_service(**SHORT_LOCK)
    keys = successor.cache.keys
    user = new_user()
    event = msg(user, "hello", pid=f"{user}:1")

    first = asyncio.create_task(stalled.handle(event))
    await asyncio.wait_for(gate.started.wait(), timeout=10)
    # Its lock is gone while it still works (its renewals could not reach Redis, say).
    assert await redis.delete(keys.lock("console", user)) == 1
    taken_over = await asyncio.wait_for(handled(successor, event), timeout=10)
    await successor.cache.flush_delivered()
    gate.release.set()
    late = await asyncio.wait_for(first, timeout=10)

    assert taken_over.kind is ReplyKind.ANSWER, taken_over
    assert late.kind is ReplyKind.DUPLICATE and late.text is None  # no second reply
    rows = await messages_of(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "hello"),
        ("assistant", taken_over.text),
    ]
    assert await redis.get(keys.dedup("console", f"{user}:1")) == b"done"


async def test_a_slow_reply_keeps_the_users_lock_past_its_ttl(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    gate = GatedResponder()
    slow = await make_service(responder=gate, **SHORT_LOCK)
    other = await make_service(**SHORT_LOCK)
    keys = other.cache.keys
    user = new_user()

    first = asyncio.create_task(slow.handle(msg(user, "first")))
    await asyncio.wait_for(gate.started.wait(), timeout=10)
    second = asyncio.create_task(other.handle(msg(user, "second")))
    await asyncio.sleep(3)  # three lock TTLs while the reply is being written

    assert not second.done(), second  # still waiting for the user's lock
    assert await redis.exists(keys.lock("console", user))
    gate.release.set()
    replies = await asyncio.wait_for(asyncio.gather(first, second), timeout=30)

    assert [r.kind for r in replies] == [ReplyKind.ANSWER] * 2
    rows = await messages_of(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "first"),
        ("assistant", replies[0].text),
        ("user", "second"),
        ("assistant", replies[1].text),
    ]
    assert "(2 earlier messages" in (replies[1].text or "")
    assert not await redis.exists(keys.lock("console", user))


async def test_an_event_is_done_only_once_its_reply_was_delivered(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    sender = await make_service(delivery_lease_seconds=30)
    other = await make_service(delivery_lease_seconds=30)
    keys = sender.cache.keys
    user = new_user()
    event = msg(user, "hello", pid=f"{user}:1")
    dedup = keys.dedup("console", f"{user}:1")

    first = await sender.handle(event)
    assert first.kind is ReplyKind.ANSWER
    assert (await redis.get(dedup) or b"").startswith(b"answered:")  # being sent
    # Another worker given the same event meanwhile waits for the sending to end...
    retry = asyncio.create_task(other.handle(event))
    await asyncio.sleep(0.3)
    assert not retry.done()
    sender.delivered(event, first.kind)  # ...which the adapter reports once the reply is out
    again = await asyncio.wait_for(retry, timeout=5)

    assert again.kind is ReplyKind.DUPLICATE and again.text is None  # no second reply
    assert await redis.get(dedup) == b"done"
    assert len(await messages_of(engine, user)) == 2


async def test_a_reply_never_delivered_is_sent_by_the_redelivery_after_the_lease(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    dead = await make_service(delivery_lease_seconds=1)  # stored its reply, then died
    survivor = await make_service(delivery_lease_seconds=1)
    user = new_user()
    event = msg(user, "still there?", pid=f"{user}:1")

    first = await dead.handle(event)  # never delivered
    started = asyncio.get_running_loop().time()
    redelivered = await asyncio.wait_for(handled(survivor, event), timeout=10)
    waited = asyncio.get_running_loop().time() - started

    assert redelivered.kind is ReplyKind.ANSWER and redelivered.text == first.text
    assert waited >= 0.5  # it waited for the lease: the first worker might still send it
    assert survivor.stats["reply_resent"] == 1
    assert len(await messages_of(engine, user)) == 2


async def test_an_event_told_cant_answer_and_delivered_is_answered_when_it_comes_again(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    """The adapter delivers "can't answer" as any reply (and reports it delivered); the
    platform's redelivery of that event, on any worker, is answered, not taken for a
    duplicate (a failover's refused messages were lost this way)."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    without_postgres = await make_service(
        database_url=dead, db_retry_deadline_seconds=0.2, db_connect_timeout_seconds=0.5
    )
    survivor = await make_service()
    user = new_user()
    event = msg(user, "hello after the outage", pid=f"{user}:1")

    told = await handled(without_postgres, event)
    await without_postgres.cache.flush_delivered()
    again_here = await handled(without_postgres, event)
    redelivered = await handled(survivor, event)
    await survivor.cache.flush_delivered()

    assert told.kind is again_here.kind is ReplyKind.UNAVAILABLE, (told, again_here)
    assert redelivered.kind is ReplyKind.ANSWER, redelivered
    rows = await messages_of(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "hello after the outage"),
        ("assistant", redelivered.text),
    ]
    keys = survivor.cache.keys
    assert await redis.get(keys.dedup("console", f"{user}:1")) == b"done"
