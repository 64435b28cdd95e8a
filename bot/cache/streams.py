"""Replies streaming on screen, booked in Redis, so that one cut off by a worker's crash
is ended by another with the interrupted note (docs/streaming.md, "A worker dies").

While a reply streams, its adapter books where it is on screen and what it shows
(`StreamBooking.shown`, at each update), and its worker renews a lease on it every
few seconds (`StreamLedger.renew`, one call for all its streams). A finished reply is
struck off. A booking whose lease ran out belongs to a dead worker: the next sweep of
any worker (`StreamLedger.orphans`) claims it (ZREM: one claimant wins) and hands it to
its adapter, which ends the message with the note.

The book is a courtesy, not the record: Postgres holds what was said. A booking lost
with Redis leaves a cut-off message as it was: ending with the cursor on Telegram and
Discord, so still not looking complete. Redis errors are logged, never raised to a
reply.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.cache.codec import text_of
from bot.cache.keys import STREAM_RECORD_TTL, Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Orphan:
    """A reply left streaming by a dead worker: where it is, and the text it shows."""

    channel: str
    where: dict[str, str]  # the adapter's own references (chat and message ids)
    text: str


class StreamLedger:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        lease: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.lease = lease  # seconds a booking lives without its worker renewing it
        self.clock = clock
        self._live: dict[str, set[str]] = {}  # this worker's bookings: channel -> ids

    def booking(self, channel: str) -> StreamBooking:
        """A book entry for one reply about to stream on `channel`."""
        return StreamBooking(self, channel, uuid.uuid4().hex)

    async def renew(self) -> None:
        """Push back the lease of every stream this worker is writing: one round trip."""
        if not any(self._live.values()):
            return
        deadline = self.clock() + self.lease
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel, ids in self._live.items():
                if ids:
                    pipe.zadd(self.keys.streams(channel), dict.fromkeys(ids, deadline), xx=True)
            await pipe.execute()

    async def orphans(self, channel: str, limit: int = 100) -> list[Orphan]:
        """Claim the channel's bookings whose lease ran out; each is claimed by one
        worker only, and is its to end."""
        index = self.keys.streams(channel)
        found = await self.redis.zrangebyscore(index, "-inf", self.clock(), start=0, num=limit)
        lapsed = [text_of(stream_id) for stream_id in found if isinstance(stream_id, bytes | str)]
        if not lapsed:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream_id in lapsed:
                pipe.zrem(index, stream_id)
            removed = await pipe.execute()
        won = [sid for sid, gone in zip(lapsed, removed, strict=True) if gone]
        if not won:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream_id in won:
                pipe.getdel(self.keys.stream(channel, stream_id))
            records = await pipe.execute()
        return [orphan for raw in records if (orphan := _orphan(channel, raw)) is not None]

    def track(self, channel: str, stream_id: str, live: bool) -> None:
        """Whether this worker is writing the stream (and renews its lease)."""
        ids = self._live.setdefault(channel, set())
        if live:
            ids.add(stream_id)
        else:
            ids.discard(stream_id)


class StreamBooking:
    """One reply's entry in the book, written by its adapter as the reply grows."""

    def __init__(self, ledger: StreamLedger, channel: str, stream_id: str) -> None:
        self._ledger = ledger
        self._channel = channel
        self._id = stream_id
        self._booked = False

    async def shown(self, where: Mapping[str, str], text: str) -> None:
        """The reply's current message is at `where`, showing `text`."""
        ledger, keys = self._ledger, self._ledger.keys
        record = json.dumps({"where": dict(where), "text": text})
        ledger.track(self._channel, self._id, live=True)
        self._booked = True
        try:
            async with ledger.redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.stream(self._channel, self._id), record, ex=STREAM_RECORD_TTL)
                pipe.zadd(keys.streams(self._channel), {self._id: ledger.clock() + ledger.lease})
                await pipe.execute()
        except RedisError as exc:
            log.warning("%s: a streaming reply is not booked (%s)", self._channel, exc)

    async def ended(self) -> None:
        """The reply is whole on screen: struck off the book."""
        if not self._booked:
            return
        ledger, keys = self._ledger, self._ledger.keys
        ledger.track(self._channel, self._id, live=False)
        try:
            async with ledger.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(keys.streams(self._channel), self._id)
                pipe.delete(keys.stream(self._channel, self._id))
                await pipe.execute()
        except RedisError as exc:
            log.warning("%s: a finished reply is still booked (%s)", self._channel, exc)

    def abandoned(self) -> None:
        """The reply could not be finished here: its lease lapses, and a sweep ends it."""
        self._ledger.track(self._channel, self._id, live=False)


def _orphan(channel: str, raw: bytes | str | None) -> Orphan | None:
    """A booking read back; None when it expired or is not what this code writes."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        where = {str(k): str(v) for k, v in record["where"].items()}
        return Orphan(channel, where, str(record["text"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s: an unreadable stream booking was dropped", channel)
        return None
