"""The inbox's SQL (revision 0008; the state machine is bot/inbox.py).

Every statement is one round trip with no BEGIN (Database.statement), but taking due
events, which locks them first (FOR UPDATE SKIP LOCKED) in one transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.database import Database

# $1 channels, $2 platform message ids, $3 places, $4 messages (JSON): the events of
# one batch, in order of arrival; $5 holder, $6 lease (seconds). A redelivery takes its
# row only from its own holder (a retry after "can't answer") or from a lapsed lease;
# else no row comes back: another worker has it in hand. Older rows are read from the
# snapshot before the insert (the caller adds the older ones of its own batch).
_RECEIVE = """
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        WITH ORDINALITY AS t(channel, event, place, message, n)
), kept AS (
    INSERT INTO inbox AS i (channel_type, platform_message_id, place, message, holder,
                            held_until)
    SELECT channel, event, place, message::jsonb, $5, now() + make_interval(secs => $6)
    FROM incoming ORDER BY n
    ON CONFLICT (channel_type, platform_message_id) DO UPDATE
        SET holder = EXCLUDED.holder, held_until = EXCLUDED.held_until, tries = i.tries + 1
        WHERE i.holder = EXCLUDED.holder OR i.held_until < now()
    RETURNING i.channel_type, i.platform_message_id, i.seq, i.place, i.received_at, i.told,
              i.tries
)
SELECT kept.*,
       ARRAY(SELECT o.seq FROM inbox AS o
             WHERE o.place = kept.place AND o.seq < kept.seq ORDER BY o.seq) AS older
FROM kept
"""

# $1 holder, $2 seqs, $3 lease (seconds).
_RENEW = """
WITH renewed AS (
    UPDATE inbox SET held_until = now() + make_interval(secs => $3)
    WHERE holder = $1 AND seq = ANY($2::bigint[])
    RETURNING 1
)
SELECT count(*) AS renewed FROM renewed
"""

# $1 seqs.
_DONE = """
WITH done AS (DELETE FROM inbox WHERE seq = ANY($1::bigint[]) RETURNING 1)
SELECT count(*) AS done FROM done
"""

# $1 seq, $2 holder, $3 nobody (the holder it is left to), $4 seconds until a sweep may
# take it, $5 whether the writer was told.
_PUT_BACK = """
UPDATE inbox SET holder = $3, held_until = now() + make_interval(secs => $4),
                 told = told OR $5
WHERE seq = $1 AND holder = $2
RETURNING seq
"""

# $1 seqs, $2 nobody: whether one of them waits for a sweep (put back, or its holder died).
_WAITING = """
SELECT EXISTS (
    SELECT 1 FROM inbox WHERE seq = ANY($1::bigint[]) AND (holder = $2 OR held_until <= now())
) AS waiting
"""

# $1 seqs, $2 nobody: how many are still in the inbox, and which of them a live holder has.
_STILL_HELD = """
SELECT count(*) AS there,
       coalesce(array_agg(seq) FILTER (WHERE holder <> $2 AND held_until > now()), '{}')
           AS held
FROM inbox WHERE seq = ANY($1::bigint[])
"""

# :holder, :lease, :channels, :limit, :place (NULL: any). Only the oldest event of each
# place is taken, so that a place is answered in order by whoever holds its head.
_TAKE_HEADS = """
WITH due AS (
    SELECT i.channel_type, i.platform_message_id FROM inbox AS i
    WHERE i.held_until < now() AND i.channel_type = ANY(CAST(:channels AS text[]))
      AND (CAST(:place AS text) IS NULL OR i.place = :place)
      AND NOT EXISTS (SELECT 1 FROM inbox AS o WHERE o.place = i.place AND o.seq < i.seq)
    ORDER BY i.seq LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE inbox AS i SET holder = :holder, held_until = now() + make_interval(secs => :lease),
                      tries = i.tries + 1
FROM due
WHERE i.channel_type = due.channel_type AND i.platform_message_id = due.platform_message_id
RETURNING i.seq, i.place, i.message, i.received_at, i.told, i.tries
"""

_PENDING = """
SELECT count(*) AS pending, count(*) FILTER (WHERE held_until < now()) AS waiting,
       extract(epoch FROM now() - min(received_at))::float8 AS oldest_seconds
FROM inbox
"""


@dataclass(frozen=True, slots=True)
class Arriving:
    """An event to keep: where it belongs and what it is."""

    channel: str
    event_id: str
    place: str
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Kept:
    """What receiving an event found: None from `receive` if another worker holds it."""

    seq: int
    received_at: datetime
    told: bool
    tries: int
    older: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Taken:
    """An event taken from the inbox by a sweep: its handler died, or it was put back."""

    seq: int
    place: str
    message: dict[str, Any]
    received_at: datetime
    told: bool
    tries: int


@dataclass(frozen=True, slots=True)
class InboxSummary:
    pending: int  # events in the inbox: not yet answered, or their reply not delivered
    waiting: int  # of them, held by nobody: their worker died, or they wait for a retry
    oldest_seconds: float | None  # since the oldest of them arrived


class InboxQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def receive(
        self, events: Sequence[Arriving], holder: uuid.UUID, lease: float
    ) -> dict[tuple[str, str], Kept]:
        """Keep the events of one batch (distinct keys), in one statement; those taken,
        by (channel, event id). Each one's older events include those of the batch."""
        columns = (
            [e.channel for e in events],
            [e.event_id for e in events],
            [e.place for e in events],
            [json.dumps(e.message) for e in events],
        )
        rows = await self._database.statement_rows(_RECEIVE, *columns, holder, lease)
        kept: dict[tuple[str, str], Kept] = {}
        batch_by_place: dict[str, list[int]] = {}
        for row in sorted(rows, key=lambda r: int(r["seq"])):
            earlier = batch_by_place.setdefault(row["place"], [])
            older = tuple(sorted({*row["older"], *earlier}))
            key = (row["channel_type"], row["platform_message_id"])
            kept[key] = Kept(row["seq"], row["received_at"], row["told"], row["tries"], older)
            earlier.append(row["seq"])
        return kept

    async def renew(self, holder: uuid.UUID, seqs: Sequence[int], lease: float) -> int:
        row = await self._database.statement(_RENEW, holder, list(seqs), lease)
        return int(row["renewed"]) if row else 0

    async def done(self, seqs: Sequence[int]) -> int:
        row = await self._database.statement(_DONE, list(seqs))
        return int(row["done"]) if row else 0

    async def put_back(
        self, seq: int, holder: uuid.UUID, nobody: uuid.UUID, after: float, told: bool
    ) -> bool:
        """Leave the event for a sweep to take `after` seconds from now (0: at once)."""
        row = await self._database.statement(_PUT_BACK, seq, holder, nobody, after, told)
        return row is not None

    async def any_waiting(self, seqs: Sequence[int], nobody: uuid.UUID) -> bool:
        """Whether one of `seqs` waits for a sweep: put back, or left by a dead holder."""
        row = await self._database.statement(_WAITING, list(seqs), nobody)
        return bool(row and row["waiting"])

    async def still_held(self, seqs: Sequence[int], nobody: uuid.UUID) -> list[int] | None:
        """Of `seqs`, those a live holder is answering; None when none is left at all."""
        row = await self._database.statement(_STILL_HELD, list(seqs), nobody)
        if row is None or not row["there"]:
            return None
        return list(row["held"])

    async def take_heads(
        self,
        holder: uuid.UUID,
        channels: Sequence[str],
        lease: float,
        limit: int,
        place: str | None = None,
    ) -> list[Taken]:
        """The oldest event of each place (of `place` only, if given) whose holder is
        gone, taken for `holder`."""
        params = {
            "holder": holder,
            "channels": list(channels),
            "lease": lease,
            "limit": limit,
            "place": place,
        }

        async def work(connection: AsyncConnection) -> list[Taken]:
            result = await connection.execute(text(_TAKE_HEADS), params)
            return [
                Taken(row.seq, row.place, row.message, row.received_at, row.told, row.tries)
                for row in result
            ]

        return await self._database.transaction(work)

    async def summary(self) -> InboxSummary:
        row = await self._database.statement(_PENDING)
        assert row is not None
        return InboxSummary(int(row["pending"]), int(row["waiting"]), row["oldest_seconds"])
