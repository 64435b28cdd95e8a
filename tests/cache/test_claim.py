"""A message's turn (bot/cache/claim.py) against real Redis: how it ends, how it waits,
how its lock expires and is renewed, and what it does without Redis."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from bot.cache.events import EventClaim, EventState
from bot.cache.hotstate import HotStateCache
from bot.cache.state import Refresh
from bot.domain import IncomingMessage, SessionState
from bot.errors import LockTimeout
from tests.cache.conftest import CacheFactory
from tests.support import free_port, until


class Failed(Exception):
    """What the body of a turn raises in these tests."""


def message(event: str | None = "ev-1", user: str = "alice") -> IncomingMessage:
    return IncomingMessage("console", user, "hello", platform_message_id=event)


def refresh() -> Refresh:
    return Refresh(session=SessionState(uuid.uuid4(), uuid.uuid4(), None))


async def event_state(cache: HotStateCache, msg: IncomingMessage) -> EventState | None:
    raw = await cache.redis.get(cache.claims.event_key(msg))
    claim = None if raw is None else EventClaim.parse(raw)
    return None if claim is None else claim.state


async def lock_holder(cache: HotStateCache, user: str = "alice") -> bytes | None:
    value: bytes | None = await cache.redis.get(cache.keys.lock("console", user))
    return value


# --- how a turn ends --------------------------------------------------------------------


async def test_a_settled_turn_marks_the_event_answered_and_frees_the_user(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    msg = message()

    async with cache.claim(msg) as claim:
        assert claim.hot is not None and not claim.duplicate
        assert await lock_holder(cache) is not None  # ours while the body works
        assert await event_state(cache, msg) is EventState.PROCESSING
        claim.settle_with(refresh())

    assert await event_state(cache, msg) is EventState.ANSWERED
    assert await lock_holder(cache) is None


async def test_a_failed_turn_leaves_the_event_unfinished_and_raises(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    msg = message()

    with pytest.raises(Failed):
        async with cache.claim(msg) as claim:
            claim.settle_with(refresh())  # even so: the error says the outcome is unknown
            raise Failed

    assert await event_state(cache, msg) is EventState.UNFINISHED
    assert await lock_holder(cache) is None


async def test_a_turn_that_stored_nothing_forgets_the_event(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    msg = message()

    async with cache.claim(msg):
        pass

    assert await event_state(cache, msg) is None  # a redelivery is answered afresh
    assert await lock_holder(cache) is None


async def test_an_event_done_is_a_duplicate_with_nothing_to_release(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    msg = message()
    await cache.redis.set(cache.claims.event_key(msg), "done")

    async with cache.claim(msg) as claim:
        assert claim.duplicate

    assert await event_state(cache, msg) is EventState.DONE
    assert await lock_holder(cache) is None


async def test_an_event_delivered_here_is_a_duplicate_before_its_mark_is_written(
    make_cache: CacheFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.cache.claim.DELIVERY_MARK_DELAY", 60.0)  # no FINISH follows
    cache = await make_cache()
    msg = message()
    async with cache.claim(msg) as claim:
        claim.settle_with(refresh())
    cache.mark_delivered(msg)

    async with cache.claim(msg) as again:
        assert again.duplicate
    assert await event_state(cache, msg) is EventState.ANSWERED  # the mark is still to go
    await cache.flush_delivered()
    assert await event_state(cache, msg) is EventState.DONE


async def test_delivery_marks_the_event_done(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    msg = message()
    async with cache.claim(msg) as claim:
        claim.settle_with(refresh())

    cache.mark_delivered(msg)
    await cache.flush_delivered()

    assert await event_state(cache, msg) is EventState.DONE


# --- waiting for the turn -------------------------------------------------------------


async def test_a_second_worker_waits_for_the_first_and_goes_after_it(
    make_cache: CacheFactory,
) -> None:
    first, second = await make_cache(), await make_cache()
    order: list[str] = []
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def hold() -> None:
        async with first.claim(message("ev-1")) as claim:
            inside.set()
            await leave.wait()
            order.append("first")
            claim.settle_with(refresh())

    async def follow() -> None:
        await inside.wait()
        async with second.claim(message("ev-2")) as claim:
            order.append("second")
            claim.settle_with(refresh())

    holder, follower = asyncio.create_task(hold()), asyncio.create_task(follow())
    await inside.wait()
    await asyncio.sleep(0.2)  # the follower is polling the lock by now
    assert order == []
    leave.set()
    await asyncio.gather(holder, follower)

    assert order == ["first", "second"]


async def test_one_workers_messages_of_a_user_go_in_arrival_order(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    order: list[int] = []

    async def turn(n: int) -> None:
        async with cache.claim(message(f"ev-{n}")) as claim:
            await asyncio.sleep(0.01)
            order.append(n)
            claim.settle_with(refresh())

    await asyncio.gather(*(turn(n) for n in range(5)))

    assert order == [0, 1, 2, 3, 4]


async def test_waiting_longer_than_lock_wait_raises_lock_timeout(
    make_cache: CacheFactory,
) -> None:
    holder, waiter = await make_cache(), await make_cache(lock_wait=0.3)
    async with holder.claim(message("ev-1")):
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            async with waiter.claim(message("ev-2")):
                pass
        assert 0.2 < time.monotonic() - started < 3
    assert await event_state(waiter, message("ev-2")) is None  # never claimed


async def test_a_reply_being_sent_elsewhere_is_waited_for_then_is_a_duplicate(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    msg = message()
    await cache.redis.set(cache.claims.event_key(msg), f"answered:{time.time()}")

    async def deliver_elsewhere() -> None:
        await asyncio.sleep(0.2)
        await cache.redis.set(cache.claims.event_key(msg), "done")

    sender = asyncio.create_task(deliver_elsewhere())
    async with cache.claim(msg) as claim:
        assert claim.duplicate
    await sender


# --- expiry and renewal ---------------------------------------------------------------


async def test_a_dead_holders_lock_expires_and_the_event_is_taken_over(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache(lock_ttl_seconds=1)
    msg = message()
    await cache.redis.set(cache.keys.lock("console", "alice"), "dead", px=500)
    await cache.redis.set(cache.claims.event_key(msg), "processing")

    started = time.monotonic()
    async with cache.claim(msg) as claim:
        waited = time.monotonic() - started
        assert claim.hot is not None and claim.hot.taken_over
        claim.settle_with(refresh())

    assert 0.3 < waited < 3


async def test_the_lock_is_renewed_while_the_body_works(make_cache: CacheFactory) -> None:
    holder, waiter = await make_cache(lock_ttl_seconds=1), await make_cache(lock_wait=0.5)

    async with holder.claim(message("ev-1")) as claim:
        token = await lock_holder(holder)
        await asyncio.sleep(2.5)  # more than twice the TTL
        assert await lock_holder(holder) == token
        with pytest.raises(LockTimeout):  # still ours: nobody else gets the turn
            async with waiter.claim(message("ev-2")):
                pass
        claim.settle_with(refresh())

    assert await lock_holder(holder) is None


async def test_a_lock_lost_while_working_is_logged(
    make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await make_cache(lock_ttl_seconds=1)
    caplog.set_level(logging.WARNING, logger="bot.cache.claim")

    async with cache.claim(message()) as claim:
        await cache.redis.set(cache.keys.lock("console", "alice"), "stolen")
        await until(lambda: "expired while its message" in caplog.text, what="the warning")
        claim.settle_with(refresh())

    assert await lock_holder(cache) == b"stolen"  # FINISH frees only its own lock


# --- without Redis --------------------------------------------------------------------


async def test_without_redis_the_turn_is_kept_in_process(make_cache: CacheFactory) -> None:
    cache = await make_cache(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    order: list[int] = []

    async def turn(n: int) -> None:
        async with cache.claim(message(f"ev-{n}")) as claim:
            assert claim.hot is None and not claim.duplicate
            await asyncio.sleep(0.01)
            order.append(n)
            claim.settle_with(refresh())

    await asyncio.gather(*(turn(n) for n in range(3)))

    assert order == [0, 1, 2]
    assert cache.guard.is_open
