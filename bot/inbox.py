"""The durable inbox: every platform event is in Postgres before the platform is told it
arrived, and stays there until its reply is delivered (revision 0008).

An event's life in the inbox, as this worker sees it:

    receive ──► in hand ──► delivered ──► deleted (batched, DELIVERED_DELAY)
                 │  ▲
                 │  └── taken by a sweep (its holder died, or it was put back)
                 └──► put back (reply deferred, or behind an older event of its place)

- **receive** (one statement, no BEGIN): the row goes in, held by this worker for
  INBOX_LEASE_SECONDS, and the older rows of the same place (writer, platform, scope)
  come back with it. Only then does the adapter acknowledge the event. A redelivery
  finds the row: it is taken only from this worker or from a lapsed lease; otherwise
  another worker has it in hand and the redelivery is acknowledged and dropped.
- **in hand**: the worker renews the leases of the events it is answering, every third
  of a lease, in one statement for all of them (`renew`, called by the worker).
- **order**: an event with an older one of its place still in the inbox (answered here
  or by another worker) waits for it to go; if nobody is answering that one (it is put
  back, or its holder died), the event is put back behind it, and the sweep answers
  the place in order.
- **sweep** (the worker, every INBOX_SWEEP_SECONDS): takes the oldest event of each
  place whose lease lapsed (FOR UPDATE SKIP LOCKED), answers it through its channel,
  then the next one of the place, until the place is empty or its next is held.
- **delivered**: the adapter delivered the reply (or there was nothing to send): the
  row is deleted, batched with the others delivered within DELIVERED_DELAY.

A worker that dies leaves its events held for at most one lease; the next sweep of any
worker then answers them: late, by at most INBOX_LEASE_SECONDS + INBOX_SWEEP_SECONDS,
rather than never.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from bot.domain import NOT_KEPT, ChatKind, IncomingMessage, Receipt
from bot.errors import InvalidInput, StoreError
from bot.local import Backoff, Batch
from bot.store.inbox import Arriving, InboxQueries, Kept, Taken
from bot.validation import storable_event_id

log = logging.getLogger(__name__)

NOBODY = uuid.UUID(int=0)  # the holder of an event put back: nobody is answering it
DELIVERED_DELAY = 0.05  # s a delivered event waits for others to be deleted with
RECEIVE_BATCH = 200  # events kept in one statement, at most
RECENTLY_DONE = 4096  # events delivered here remembered, so that a newer one never waits
EventKey = tuple[str, str]


def place_of(message: IncomingMessage) -> str:
    """The order an event keeps across workers: its writer's, on its platform and scope."""
    return f"{message.channel}\x1f{message.scope.key}\x1f{message.channel_user_id}"


_FIELDS = tuple(f.name for f in dataclasses.fields(IncomingMessage))


def encoded(message: IncomingMessage) -> dict[str, Any]:
    return {name: getattr(message, name) for name in _FIELDS}


# What a jsonb value cannot hold: NUL, and lone surrogates (as bot/validation.py says).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _unstorable(fields: dict[str, Any]) -> bool:
    return any(isinstance(v, str) and _UNSTORABLE.search(v) for v in fields.values())


def decoded(message: dict[str, Any]) -> IncomingMessage:
    known = {k: v for k, v in message.items() if k in _FIELDS}
    return IncomingMessage(**{**known, "chat_kind": ChatKind(known["chat_kind"])})


class Inbox:
    """This worker's side of the inbox (one per service)."""

    def __init__(self, queries: InboxQueries, lease: float, wait: float) -> None:
        self.queries = queries
        self.lease = lease
        self.wait = wait  # longest an event waits for an older one being answered elsewhere
        self.holder = uuid.uuid4()
        self._receipts: OrderedDict[EventKey, tuple[Receipt, float]] = OrderedDict()
        self._arriving: list[tuple[Arriving, asyncio.Future[Kept | None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._here: dict[int, EventKey] = {}  # seqs of the receipts above
        self._working: dict[int, int] = {}  # seq -> handlings of it running here
        self._done: OrderedDict[int, None] = OrderedDict()
        self._delivered: Batch[int] = Batch(self._delete, DELIVERED_DELAY)  # seqs to delete

    # -- receiving -------------------------------------------------------------------

    async def receive(self, message: IncomingMessage) -> Receipt:
        """Keep the event (StoreError if it cannot be: the platform must not be told it
        arrived). A message with no usable platform id is not kept: nothing could tell
        a redelivery of it from a new one. Nor one that Postgres cannot hold as JSON (a
        NUL or a lone surrogate in a field): it would fail the whole batch it is written
        with; it is answered live (the service cleans or refuses it), without a lease."""
        try:
            event = storable_event_id(message.platform_message_id)
        except InvalidInput:
            return NOT_KEPT
        if event is None:
            return NOT_KEPT
        message = dataclasses.replace(message, platform_message_id=event)
        fields = encoded(message)
        if _unstorable(fields):
            return NOT_KEPT
        kept = await self._keep(Arriving(message.channel, event, place_of(message), fields))
        if kept is None:
            return Receipt(taken=False)
        receipt = Receipt(
            True, kept.seq, kept.older, kept.tries > 0, kept.received_at, kept.told, kept.tries
        )
        self._remember((message.channel, event), receipt)
        return receipt

    async def _keep(self, arriving: Arriving) -> Kept | None:
        """Keep one event, in the next batch written: while one batch is being written,
        the events arriving meanwhile gather for the next, so that under load many share
        one statement and one commit, and an idle worker's event waits for nothing."""
        future: asyncio.Future[Kept | None] = asyncio.get_running_loop().create_future()
        self._arriving.append((arriving, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_batches())
        return await future

    async def _write_batches(self) -> None:
        try:
            while self._arriving:
                batch = self._arriving[:RECEIVE_BATCH]
                del self._arriving[:RECEIVE_BATCH]
                await self._write(batch)
        finally:
            self._writer = None

    async def _write(self, batch: list[tuple[Arriving, asyncio.Future[Kept | None]]]) -> None:
        distinct = {(a.channel, a.event_id): a for a, _ in batch}
        try:
            kept = await self.queries.receive(list(distinct.values()), self.holder, self.lease)
        except Exception as exc:  # noqa: BLE001 - none of the batch was kept: each is told
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for arriving, future in batch:
            if not future.done():  # its receiver may have been cancelled meanwhile
                future.set_result(kept.get((arriving.channel, arriving.event_id)))

    def adopt(self, taken: Taken) -> IncomingMessage:
        """An event a sweep took: its message, with its receipt kept for the service."""
        message = decoded(taken.message)
        assert message.platform_message_id is not None
        receipt = Receipt(True, taken.seq, (), True, taken.received_at, taken.told, taken.tries - 1)
        self._remember((message.channel, message.platform_message_id), receipt)
        return message

    def receipt(self, message: IncomingMessage) -> Receipt | None:
        """The receipt of an event received or adopted here (None: never kept)."""
        if message.platform_message_id is None:
            return None
        found = self._receipts.get((message.channel, message.platform_message_id))
        return found[0] if found is not None else None

    def _remember(self, key: EventKey, receipt: Receipt) -> None:
        self._receipts[key] = (receipt, time.monotonic())
        self._receipts.move_to_end(key)
        if receipt.seq is not None:
            self._here[receipt.seq] = key
        # One never delivered (its delivery failed) lapses, and a sweep takes it again.
        horizon = time.monotonic() - 2 * self.lease
        while self._receipts:
            oldest, since = next(iter(self._receipts.values()))
            if since > horizon or self._working.get(oldest.seq or 0):
                break
            self._receipts.popitem(last=False)
            self._here.pop(oldest.seq or 0, None)

    def _forget(self, receipt: Receipt) -> None:
        key = self._here.pop(receipt.seq, None) if receipt.seq is not None else None
        if key is not None:
            self._receipts.pop(key, None)

    # -- in hand ---------------------------------------------------------------------

    def working(self, receipt: Receipt) -> None:
        if receipt.seq is not None:
            self._working[receipt.seq] = self._working.get(receipt.seq, 0) + 1

    def idle(self, receipt: Receipt) -> None:
        seq = receipt.seq
        if seq is None or seq not in self._working:
            return
        self._working[seq] -= 1
        if not self._working[seq]:
            del self._working[seq]

    async def renew(self) -> int:
        """Renew the leases of the events being answered here (one statement)."""
        seqs = list(self._working)
        if not seqs:
            return 0
        return await self.queries.renew(self.holder, seqs, self.lease)

    async def unanswered_older(self, receipt: Receipt) -> bool:
        """Wait (up to `wait`) for the older events of the receipt's place that are being
        answered, here or elsewhere; True if one is still there (the receipt must go
        behind it). Those handled here too: the turn's lock orders messages as they
        reach it, not as they were received, and one of them still waiting for an
        older one elsewhere may yet be put back."""
        older = list(receipt.older)
        backoff = Backoff(self.wait, first=0.02, longest=0.25)
        while True:
            older = [s for s in older if s not in self._done]  # delivered here meanwhile
            if not older:
                return False
            live = await self.queries.still_held(older, NOBODY)
            if live is None:
                return False  # all gone
            if not live or not await backoff.pause():
                return True  # nobody is answering one of them, or it takes too long

    async def older_waiting(self, receipt: Receipt) -> bool:
        """In the turn: whether an older event of the receipt's place waits for a sweep
        (put back while this one waited for the turn, or its holder died): this one
        must go behind it. One statement, only for an event with older ones."""
        older = [s for s in receipt.older if s not in self._done]
        return bool(older) and await self.queries.any_waiting(older, NOBODY)

    async def put_back(self, receipt: Receipt, after: float, *, told: bool) -> bool:
        """Leave the event to a sweep, `after` seconds from now (0: as soon as its place
        allows); False if it is no longer this worker's (or not kept)."""
        if receipt.seq is None:
            return False
        self._forget(receipt)  # another event of its place must wait for it now
        return await self.queries.put_back(receipt.seq, self.holder, NOBODY, after, told)

    # -- delivered -------------------------------------------------------------------

    def delivered(self, message: IncomingMessage) -> None:
        """The reply to `message` reached the platform (or there was none to send)."""
        receipt = self.receipt(message)
        if receipt is None or receipt.seq is None:
            return
        self._forget(receipt)
        self._done[receipt.seq] = None
        if len(self._done) > RECENTLY_DONE:
            self._done.popitem(last=False)
        self._delivered.add(receipt.seq)

    async def _delete(self, seqs: list[int]) -> None:
        try:
            await self.queries.done(seqs)
        except StoreError as exc:  # they lapse, and a sweep finds each answered already
            log.warning("could not clear %d delivered events from the inbox: %s", len(seqs), exc)

    async def flush(self) -> None:
        """Delete what was delivered now, and wait for deletes on their way (shutdown)."""
        await self._delivered.flush()

    # -- sweeping --------------------------------------------------------------------

    async def take(self, channels: Sequence[str], limit: int) -> list[Taken]:
        """The oldest event of each place whose holder is gone (or that was put back)."""
        if not channels:
            return []
        return await self.queries.take_heads(self.holder, channels, self.lease, limit)

    async def drop(self, taken: Taken) -> None:
        """Delete an event that will never be answered (the worker gives up on it)."""
        await self.queries.done([taken.seq])

    async def take_next(self, place: str, channels: Sequence[str]) -> Taken | None:
        """The next event of `place`, once the one answered before it is deleted."""
        await self.flush()
        taken = await self.queries.take_heads(self.holder, channels, self.lease, 1, place)
        return taken[0] if taken else None
