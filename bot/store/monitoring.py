"""The SQL of `bot ops health` and `bot ops stats`: round trips, the server version,
recent activity, the size and use of the tables and indexes, and how far a read
replica's replay is behind its primary. Read only.

As in bot/store/ops_queries.py nothing is retried: a health check reports a failure
at once, as a StoreError whose cause names the driver's error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.database import Database
from bot.store.migrate import current_revision
from bot.store.records import (
    ConversationActivity,
    IndexUsage,
    MessageCounts,
    PostgresActivity,
    PostgresUsage,
    ReplicaStatus,
    TableUsage,
)
from bot.store.retry import errors_mapped

_PING = text("SELECT 1")
_SERVER_VERSION = text("SHOW server_version")

_MESSAGES_BY = """
    SELECT {column} AS value,
           count(*) FILTER (WHERE timestamp > now() - interval '1 hour') AS last_hour,
           count(*) AS last_24h
    FROM messages WHERE timestamp > now() - interval '24 hours' {extra}
    GROUP BY 1 ORDER BY last_24h DESC, 1
"""
_CONVERSATION_ACTIVITY = text(
    """
    SELECT (SELECT count(*) FROM conversations WHERE is_active) AS open,
           count(*) FILTER (WHERE last_activity > now() - interval '1 hour')
               AS active_last_hour,
           count(*) AS active_last_24h
    FROM conversations WHERE last_activity > now() - interval '24 hours'
    """
)
_MESSAGES_BY_CHANNEL = text(_MESSAGES_BY.format(column="channel_type", extra=""))
_REPLIES_BY_MODEL = text(
    _MESSAGES_BY.format(column="coalesce(model_used, '?')", extra="AND role = 'assistant'")
)
# A partitioned table (messages, revision 0007) counts as one: its partitions summed
# (`bot ops partitions` lists them one by one); its indexes likewise.
_TABLES = text(
    """
    SELECT root.relname AS table, sum(s.n_live_tup)::bigint AS rows,
           sum(pg_total_relation_size(s.relid))::bigint AS total_bytes,
           sum(pg_relation_size(s.relid))::bigint AS table_bytes,
           sum(pg_indexes_size(s.relid))::bigint AS index_bytes,
           sum(s.seq_scan)::bigint AS seq_scan, sum(s.idx_scan)::bigint AS idx_scan
    FROM pg_stat_user_tables s
    JOIN pg_class root ON root.oid = coalesce(pg_partition_root(s.relid), s.relid)
    WHERE s.schemaname = current_schema()
    GROUP BY root.relname
    ORDER BY total_bytes DESC, root.relname
    """
)
_INDEXES = text(
    """
    SELECT root_table.relname AS table, root_index.relname AS index,
           sum(s.idx_scan)::bigint AS scans, sum(s.idx_tup_read)::bigint AS tuples_read,
           sum(pg_relation_size(s.indexrelid))::bigint AS bytes
    FROM pg_stat_user_indexes s
    JOIN pg_class root_index
      ON root_index.oid = coalesce(pg_partition_root(s.indexrelid), s.indexrelid)
    JOIN pg_index i ON i.indexrelid = root_index.oid
    JOIN pg_class root_table ON root_table.oid = i.indrelid
    WHERE s.schemaname = current_schema()
    GROUP BY 1, 2
    ORDER BY 1, 2
    """
)


class PostgresProbe:
    """Round trips on one connection, for a health check to time."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def ping(self) -> None:
        await self._connection.execute(_PING)

    async def server_version(self) -> str | None:
        version = (await self._connection.execute(_SERVER_VERSION)).scalar()
        return None if version is None else str(version)


# The primary's WAL position (None on a standby), to compare a replica's replay with.
_WAL_POSITION = text(
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END"
)
# Read on the replica: the bytes of the primary's WAL (its position given as text) not
# replayed yet; a replica that replayed past that position is not behind (0).
_REPLICA_STATUS = text(
    """SELECT pg_is_in_recovery() AS in_recovery,
              CASE WHEN pg_is_in_recovery() THEN greatest(0, pg_wal_lsn_diff(
                  CAST(CAST(:primary_position AS text) AS pg_lsn), pg_last_wal_replay_lsn()))
              END::bigint AS lag_bytes,
              extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
                  AS since_last_replay"""
)

_PUBLIC_TABLES = text(
    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
)


class Monitoring:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def tables(self) -> list[str]:
        """The tables of the database's public schema (none: an empty database)."""

        async def read(connection: AsyncConnection) -> list[str]:
            return list((await connection.execute(_PUBLIC_TABLES)).scalars())

        return await self._database.once(read)

    async def row_counts(self) -> dict[str, int]:
        """Exact row counts of every table of the public schema (a backup's check)."""

        async def count(connection: AsyncConnection) -> dict[str, int]:
            names = list((await connection.execute(_PUBLIC_TABLES)).scalars())
            found = {}
            for name in names:  # names from the catalogue, quoted: no caller's text
                sql = text(f'SELECT count(*) FROM public."{name}"')
                found[name] = int((await connection.execute(sql)).scalar_one())
            return found

        return await self._database.once(count)

    @asynccontextmanager
    async def probe(self) -> AsyncIterator[PostgresProbe]:
        """A connection of the pool, held for the probe's round trips."""
        with errors_mapped():
            async with self._database.engine.connect() as connection:
                yield PostgresProbe(connection)

    async def schema_revision(self) -> str | None:
        """The revision the database is migrated to (None: an empty database)."""
        with errors_mapped():
            return await current_revision(self._database.engine)

    async def activity(self) -> PostgresActivity:
        return await self._database.once(_activity)

    async def usage(self) -> PostgresUsage:
        return await self._database.once(_usage)

    async def wal_position(self) -> str | None:
        """The server's current WAL position, if it is a primary (None: a standby)."""

        async def read(connection: AsyncConnection) -> str | None:
            return (await connection.execute(_WAL_POSITION)).scalar()

        return await self._database.once(read)

    async def replica_status(self, primary_position: str | None) -> ReplicaStatus:
        """This server as a replica of a primary at `primary_position` (None: unknown)."""

        async def read(connection: AsyncConnection) -> ReplicaStatus:
            params = {"primary_position": primary_position}
            row = (await connection.execute(_REPLICA_STATUS, params)).one()
            return ReplicaStatus(**row._mapping)

        return await self._database.once(read)


async def _activity(connection: AsyncConnection) -> PostgresActivity:
    conversations = (await connection.execute(_CONVERSATION_ACTIVITY)).one()
    by_channel = await connection.execute(_MESSAGES_BY_CHANNEL)
    channels = tuple(MessageCounts(**row._mapping) for row in by_channel)
    by_model = await connection.execute(_REPLIES_BY_MODEL)
    models = tuple(MessageCounts(**row._mapping) for row in by_model)
    activity = ConversationActivity(**conversations._mapping)
    return PostgresActivity(activity, channels, models)


async def _usage(connection: AsyncConnection) -> PostgresUsage:
    tables = await connection.execute(_TABLES)
    table_usage = tuple(TableUsage(**row._mapping) for row in tables)
    indexes = await connection.execute(_INDEXES)
    index_usage = tuple(IndexUsage(**row._mapping) for row in indexes)
    return PostgresUsage(table_usage, index_usage)
