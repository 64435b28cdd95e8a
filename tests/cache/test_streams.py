"""The book of replies streaming on screen (bot/cache/streams.py) on the real Redis:
a booking lives while its worker renews it, is claimed by exactly one sweeper once
its lease lapses, is struck off when its reply ends, and a Redis that fails never
fails a reply."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from bot.cache.streams import Orphan, StreamLedger
from bot.config import Settings
from bot.stores import keys_for
from tests.support import STREAM_LEASE, ManualClock, free_port

WHERE = {"chat_id": "-100123", "message_id": "77"}


def later(streams: StreamLedger, seconds: float) -> None:
    assert isinstance(streams.clock, ManualClock)
    streams.clock.now += seconds


async def test_a_booking_is_an_orphan_once_its_lease_lapses_not_before(
    streams: StreamLedger,
) -> None:
    booking = streams.booking("telegram")
    await booking.shown(WHERE, "one two")
    await booking.shown(WHERE, "one two three")  # the latest text is what is kept
    booking.abandoned()  # the handler died: nobody renews it

    later(streams, STREAM_LEASE - 1)
    assert await streams.orphans("telegram") == []
    later(streams, 2)
    assert await streams.orphans("telegram") == [Orphan("telegram", WHERE, "one two three")]
    assert await streams.orphans("telegram") == []  # claimed, and gone from the book


async def test_the_worker_writing_a_stream_keeps_it_alive_by_renewing(
    streams: StreamLedger,
) -> None:
    booking = streams.booking("discord")
    await booking.shown(WHERE, "still going")
    for _ in range(5):  # far longer than one lease, renewed a third of a lease apart
        later(streams, STREAM_LEASE / 3)
        await streams.renew()
        assert await streams.orphans("discord") == []
    await booking.ended()
    later(streams, STREAM_LEASE * 2)
    assert await streams.orphans("discord") == []  # ended: nothing left to end


async def test_an_orphan_is_claimed_by_one_sweeper_of_many(
    streams: StreamLedger, redis: Redis, settings: Settings
) -> None:
    for n in range(20):
        booking = streams.booking("slack")
        await booking.shown({"channel": "C1", "ts": f"1.{n}"}, f"reply {n}")
        booking.abandoned()
    later(streams, STREAM_LEASE + 1)
    sweepers = [
        StreamLedger(redis, keys_for(settings), STREAM_LEASE, clock=streams.clock) for _ in range(4)
    ]
    claimed: list[str] = []
    for _ in range(3):  # sweeps repeat, each taking up to `limit`, all at once
        found = await asyncio.gather(*(s.orphans("slack", limit=7) for s in sweepers))
        claimed += [orphan.text for batch in found for orphan in batch]
    assert sorted(claimed) == sorted(f"reply {n}" for n in range(20))  # each one, once


async def test_a_booking_another_channel_made_is_not_this_ones(streams: StreamLedger) -> None:
    booking = streams.booking("discord")
    await booking.shown(WHERE, "text")
    booking.abandoned()
    later(streams, STREAM_LEASE + 1)
    assert await streams.orphans("telegram") == []
    assert len(await streams.orphans("discord")) == 1


async def test_an_unreadable_booking_is_dropped_with_a_warning(
    streams: StreamLedger, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    booking = streams.booking("telegram")
    await booking.shown(WHERE, "text")
    found = [k async for k in redis.scan_iter(match=f"{streams.keys.prefix}stream:telegram:*")]
    [record] = [key for key in found if key != streams.keys.streams("telegram").encode()]
    await redis.set(record, b"\xff not json")
    later(streams, STREAM_LEASE + 1)
    with caplog.at_level(logging.WARNING, logger="bot.cache.streams"):
        assert await streams.orphans("telegram") == []
    assert "unreadable stream booking" in caplog.text


async def test_a_redis_that_fails_is_logged_and_never_fails_the_reply(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        ledger = StreamLedger(dead, keys_for(settings), STREAM_LEASE)
        booking = ledger.booking("telegram")
        with caplog.at_level(logging.WARNING, logger="bot.cache.streams"):
            await booking.shown(WHERE, "text")
            await booking.ended()
    finally:
        await dead.aclose()
    assert "is not booked" in caplog.text and "still booked" in caplog.text
