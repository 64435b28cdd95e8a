"""A conversation stays in order when Redis forgets the turn's lock (DESIGN.md,
invariant 9): Postgres fences each turn (bot/store/turn_hold.py, revision 0006), so a
message handled meanwhile by another worker is answered on the newer context, after
the reply being written, never interleaved with it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.codec import FENCE_FIELD
from bot.domain import ReplyKind
from bot.service import INTERRUPTED_NOTE, ConversationService
from bot.tallies import CacheRead, Tally
from tests.support import (
    GatedResponder,
    ServiceFactory,
    assert_in_order,
    conversation_of,
    echo,
    execute,
    flush_cache,
    msg,
    new_user,
    until,
)


class Screen:
    """What an adapter showed of a streamed reply."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, piece: str) -> None:
        self.pieces.append(piece)


async def test_a_flush_mid_reply_cannot_interleave_a_conversation(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    slow = GatedResponder()
    first, second = await make_service(responder=slow), await make_service()
    user = new_user()
    await second.handle(msg(user, "zero"))

    answering = asyncio.ensure_future(first.handle(msg(user, "one")))
    await slow.started.wait()
    assert await flush_cache(first) > 0  # the user's lock goes with everything else
    other = await second.handle(msg(user, "two"))  # takes the turn Redis forgot
    slow.release.set()
    late = await answering

    assert other.text == echo("two", 2)
    assert late.text == echo("one", 4)  # answered again, on the context that grew
    assert first.stats[Tally.TURN_CONFLICT] == 1
    assert_in_order(await conversation_of(engine, user))


async def test_a_message_waits_for_a_reply_streaming_elsewhere_after_a_flush(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    slow = GatedResponder()
    first, second = await make_service(responder=slow), await make_service()
    user, screen = new_user(), Screen()
    await second.handle(msg(user, "zero"), Screen())

    streaming = asyncio.ensure_future(first.handle(msg(user, "one"), screen))
    await slow.started.wait()  # "one" is stored and its turn held; nothing shown yet
    assert await flush_cache(first) > 0
    waiting = asyncio.ensure_future(second.handle(msg(user, "two"), Screen()))
    await until(lambda: second.stats[Tally.TURN_CONFLICT] > 0, what="the turn is held")
    assert not waiting.done()
    slow.release.set()
    shown, later = await streaming, await waiting

    assert shown.kind is ReplyKind.ANSWER and "".join(screen.pieces) == echo("one", 2)
    assert later.text == echo("two", 4)
    assert_in_order(await conversation_of(engine, user))


async def test_a_reply_that_stalled_past_its_hold_is_shown_cut_off_and_not_stored(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    slow = GatedResponder()
    first, second = await make_service(responder=slow), await make_service()
    user, screen = new_user(), Screen()

    stalled = asyncio.ensure_future(first.handle(msg(user, "one"), screen))
    await slow.started.wait()
    assert await flush_cache(first) > 0
    await execute(  # its worker stalled: the hold lapsed unrenewed
        engine,
        "UPDATE conversations SET reply_due = now() - interval '1 second' "
        "WHERE user_id = (SELECT id FROM users WHERE channel_user_id = :user)",
        user=user,
    )
    overtaking = await second.handle(msg(user, "two"), Screen())
    slow.release.set()
    cut: Any = await stalled

    assert overtaking.text == echo("two", 1)  # on "one", which has no reply stored
    assert cut.kind is ReplyKind.INTERRUPTED and cut.text.endswith(INTERRUPTED_NOTE)
    assert await conversation_of(engine, user) == [
        ("user", "one"), ("user", "two"), ("assistant", echo("two", 1))
    ]  # fmt: skip


async def test_a_cached_context_without_its_fence_or_behind_it_is_read_again(
    service: ConversationService, redis: Redis
) -> None:
    user = new_user()
    session_key = service.cache.keys.session("console", user)
    await service.handle(msg(user, "one"))
    await redis.hdel(session_key, FENCE_FIELD)  # cached by a version that kept no fence
    misses = service.stats[CacheRead.CONTEXT.tally(False)]

    two = await service.handle(msg(user, "two"))

    assert two.text == echo("two", 2)
    assert service.stats[CacheRead.CONTEXT.tally(False)] == misses + 1  # from Postgres
    await redis.hset(session_key, FENCE_FIELD, str(uuid.uuid4()))  # behind Postgres's

    three = await service.handle(msg(user, "three"))

    assert three.text == echo("three", 4)
    assert service.stats[Tally.TURN_CONFLICT] == 1  # answered again on Postgres's context
