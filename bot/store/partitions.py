"""The SQL of the monthly partitions of `messages` (revision 0007): list them, make
months ahead, and drop whole old months. Each change is one short transaction.

Every change to the set of partitions takes one transaction-level advisory lock
first, so workers and `bot ops partitions` never race to make or drop the same month
(and it works behind a transaction pooler: nothing outlives the transaction), then
looks again at what exists.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.database import Database
from bot.store.models import DEFAULT_PARTITION

# Any fixed 64-bit number: "the set of partitions of messages" among advisory locks.
PARTITION_LOCK_ID = 0x6368_6174_626F_7402
# Detaching a month locks the whole table briefly: never queue behind long work there.
DETACH_LOCK_TIMEOUT = "2s"

_LOCK = text(f"SELECT pg_advisory_xact_lock({PARTITION_LOCK_ID})")
_PARTITIONS = text(
    """
    SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound,
           pg_total_relation_size(c.oid) AS bytes
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'messages'::regclass
    ORDER BY c.relname
    """
)
# "FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')", or DEFAULT.
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
_EXISTS = text("SELECT to_regclass(:name) IS NOT NULL")
_IN_DEFAULT = text(
    f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} "
    "WHERE timestamp >= :lower AND timestamp < :upper)"
)
# Claims of a month's messages, deleted before the month is detached (Postgres refuses
# to detach a partition whose rows are still referenced).
_DELETE_CLAIMS = text(
    """
    WITH events AS (
        DELETE FROM message_events WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM message_events
            WHERE message_timestamp >= :lower AND message_timestamp < :upper LIMIT :limit))
        RETURNING 1
    ), replies AS (
        DELETE FROM message_replies WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM message_replies
            WHERE reply_timestamp >= :lower AND reply_timestamp < :upper LIMIT :limit))
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM replies)
    """
)


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: datetime | None  # None: the default partition (any month without its own)
    upper: datetime | None
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DroppedMonth:
    name: str
    rows: int
    conversations: tuple[uuid.UUID, ...]  # the conversations it held messages of


def month_name(month: datetime) -> str:
    return f"messages_p{month:%Y_%m}"


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(month: datetime, months: int) -> datetime:
    index = month.year * 12 + month.month - 1 + months
    return month.replace(year=index // 12, month=index % 12 + 1)


class PartitionQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def partitions(self, progress: Callable[[int], None] | None = None) -> list[Partition]:
        """Every partition of messages with its bounds, exact row count and size;
        `progress` is told of each partition counted."""

        async def work(connection: AsyncConnection) -> list[Partition]:
            found = []
            for row in list(await connection.execute(_PARTITIONS)):
                lower, upper = _bounds(row.bound)
                rows = await connection.scalar(text(f'SELECT count(*) FROM "{row.name}"'))
                found.append(Partition(row.name, lower, upper, int(rows or 0), row.bytes))
                if progress is not None:
                    progress(1)
            return sorted(found, key=lambda p: (p.lower is None, p.lower or datetime.min))

        return await self._database.once(work)

    async def create_month(self, month: datetime) -> bool:
        """Make the partition of `month` (its first instant, UTC) unless it exists; rows
        of that month already in the default partition move into it. True if made."""
        lower, upper = month, add_months(month, 1)
        name = month_name(month)

        async def work(connection: AsyncConnection) -> bool:
            await connection.execute(_LOCK)
            if await connection.scalar(_EXISTS, {"name": name}):
                return False
            bounds = {"lower": lower, "upper": upper}
            if await connection.scalar(_IN_DEFAULT, bounds):
                await _adopt_from_default(connection, name, lower, upper)
            else:
                await connection.exec_driver_sql(
                    f"CREATE TABLE {name} PARTITION OF messages FOR VALUES "
                    f"FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
                )
            return True

        return await self._database.transaction(work)

    async def delete_claims(self, lower: datetime, upper: datetime, limit: int) -> int:
        """Delete up to `limit` claims of each kind for messages in [lower, upper)."""

        async def work(connection: AsyncConnection) -> int:
            params = {"lower": lower, "upper": upper, "limit": limit}
            return int(await connection.scalar(_DELETE_CLAIMS, params) or 0)

        return await self._database.transaction(work)

    async def drop_month(self, partition: Partition) -> DroppedMonth | None:
        """Detach and drop a month whose claims are gone; what it held. None: another
        process dropped it first."""

        async def work(connection: AsyncConnection) -> DroppedMonth | None:
            await connection.execute(_LOCK)
            if not await connection.scalar(_EXISTS, {"name": partition.name}):
                return None
            sql = text(f"SELECT DISTINCT conversation_id FROM {partition.name}")
            held = tuple((await connection.execute(sql)).scalars())
            rows = await connection.scalar(text(f"SELECT count(*) FROM {partition.name}"))
            await connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
            await connection.exec_driver_sql(
                f"ALTER TABLE messages DETACH PARTITION {partition.name}"
            )
            await connection.exec_driver_sql(f"DROP TABLE {partition.name}")
            return DroppedMonth(partition.name, int(rows or 0), held)

        return await self._database.transaction(work)


async def _adopt_from_default(
    connection: AsyncConnection, name: str, lower: datetime, upper: datetime
) -> None:
    """Move the month's rows out of the default partition into a new partition of its
    own, in this transaction. Their claims reference them, so they step aside while
    the rows move (the foreign keys would otherwise delete them with the rows)."""

    def within(column: str) -> str:
        return f"{column} >= '{lower.isoformat()}' AND {column} < '{upper.isoformat()}'"

    range_ = within("timestamp")
    statements = [
        "CREATE TEMP TABLE moving_events ON COMMIT DROP AS SELECT * FROM message_events "
        f"WHERE {within('message_timestamp')}",
        "CREATE TEMP TABLE moving_replies ON COMMIT DROP AS SELECT * FROM message_replies "
        f"WHERE {within('reply_timestamp')}",
        "DELETE FROM message_events e USING moving_events m "
        "WHERE e.channel_type = m.channel_type AND e.platform_message_id = m.platform_message_id",
        "DELETE FROM message_replies r USING moving_replies m WHERE r.reply_to = m.reply_to",
        f"CREATE TABLE {name} (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
        f"INSERT INTO {name} SELECT * FROM {DEFAULT_PARTITION} WHERE {range_}",
        f"DELETE FROM {DEFAULT_PARTITION} WHERE {range_}",
        f"ALTER TABLE messages ATTACH PARTITION {name} "
        f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')",
        "INSERT INTO message_events SELECT * FROM moving_events",
        "INSERT INTO message_replies SELECT * FROM moving_replies",
    ]
    for sql in statements:
        await connection.exec_driver_sql(sql)


def _bounds(bound: str) -> tuple[datetime | None, datetime | None]:
    found = _BOUND.search(bound)
    if found is None:
        return None, None  # DEFAULT
    return datetime.fromisoformat(found[1]), datetime.fromisoformat(found[2])
