"""Counters the bench attaches to the clients it drives, so every figure is counted.

Postgres, from the driver: every statement SQLAlchemy sends (`before_cursor_execute`)
and every call the asyncpg connection makes on its own behalf (BEGIN, COMMIT,
ROLLBACK, the pool's pre-ping, statement preparation), through an asyncpg
`connection_class` that SQLAlchemy's `do_connect` event puts in place. Redis: a
round trip is one write of packed commands to the socket followed by the replies
(one per `send_packed_command`), a call is one packed command (a script is one
call), and the commands the server ran, scripts included, come from
`INFO commandstats` deltas.

Nothing here is used outside the bench: production clients never see these hooks.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection as _ConnectionBase
else:
    _ConnectionBase = object

# Kinds of Postgres round trip.
READ, WRITE, CONTROL, PING, PREPARE = "read", "write", "control", "ping", "prepare"
PG_KINDS = (READ, WRITE, CONTROL, PING, PREPARE)
COMMITS = "commits"  # transactions committed (counted beside their COMMIT's round trip)

_CONTROL = re.compile(
    r"(BEGIN|COMMIT|ROLLBACK|START|END|ABORT|SAVEPOINT|RELEASE|SET|RESET|SHOW|DISCARD)\b",
    re.IGNORECASE,
)
_LOCKING = re.compile(r"\bFOR\s+(NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b", re.IGNORECASE)
_WRITES = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|COPY|TRUNCATE|CREATE|ALTER|DROP|VACUUM|ANALYZE)\b",
    re.IGNORECASE,
)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


@functools.lru_cache(maxsize=1024)
def classify(sql: str) -> str:
    """read, write (any statement that can change data, CTEs included), control or ping."""
    statement = _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not statement:
        return PING  # SQLAlchemy's pre-ping sends an empty statement
    if _CONTROL.match(statement):
        return CONTROL
    return WRITE if _WRITES.search(_LOCKING.sub(" ", statement)) else READ


class PgProbe:
    """Postgres round trips of one engine (or raw asyncpg connections), by kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def attach(self, engine: AsyncEngine) -> None:
        """Count `engine`'s traffic; call before it opens its first connection."""
        sync = engine.sync_engine
        event.listen(sync, "do_connect", self._do_connect)
        event.listen(sync, "connect", self._on_connect)
        event.listen(sync, "checkout", self._on_checkout)
        event.listen(sync, "before_cursor_execute", self._before_cursor_execute)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `asyncpg.connect` that count that connection's calls."""
        return {"connection_class": CountingConnection}

    def adopt(self, connection: Any) -> None:
        if isinstance(connection, CountingConnection):
            connection.bench_probe = self

    def snapshot(self) -> Counter[str]:
        return Counter(self.counts)

    def _do_connect(self, dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        # Counting on top of the class the engine chose (a pooler's sets its own).
        cparams["connection_class"] = _counting(cparams.get("connection_class", asyncpg.Connection))

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        self.counts["connections"] += 1
        self.adopt(dbapi_connection.driver_connection)

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self.counts["checkouts"] += 1

    def _before_cursor_execute(
        self, conn: Any, cursor: Any, statement: str, *args: Any, **kwargs: Any
    ) -> None:
        self.counts[classify(statement)] += 1


class CountingConnection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that reports the calls asyncpg makes outside SQLAlchemy's
    cursor: transaction control, pings, preparing statements, and raw queries."""

    bench_probe: PgProbe | None = None

    def _count(self, kind: str) -> None:
        if self.bench_probe is not None:
            self.bench_probe.counts[kind] += 1

    def _count_prepared(self, query: str) -> None:
        """A statement with parameters; without a statement cache (behind a transaction
        pooler) asyncpg parses it anew each time, in a round trip before the execution."""
        self._count(classify(query))
        if not self._stmt_cache_enabled:
            self._count(PREPARE)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if args:
            self._count_prepared(query)
        else:
            self._count(classify(query))  # the simple protocol: one round trip
        if query.lstrip()[:6].upper() == "COMMIT":
            self._count(COMMITS)
        return await super().execute(query, *args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._count_prepared(query)
        return await super().fetch(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._count_prepared(query)
        return await super().fetchrow(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._count_prepared(query)
        return await super().fetchval(query, *args, **kwargs)

    async def prepare(self, query: str, **kwargs: Any) -> Any:
        self._count(PREPARE)
        return await super().prepare(query, **kwargs)


@functools.cache
def _counting(base: type[asyncpg.Connection]) -> type[CountingConnection]:
    if issubclass(base, CountingConnection):
        return base
    return type(f"Counting{base.__name__}", (CountingConnection, base), {})


class _CountingRedisConnection(_ConnectionBase):
    bench_probe: RedisProbe

    def pack_command(self, *args: Any) -> Any:
        self.bench_probe.counts["calls"] += 1
        return super().pack_command(*args)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        probe = self.bench_probe
        probe.counts["sends"] += 1
        if not probe.cluster:  # one Redis: each send is one wait for its answer
            probe.counts["round_trips"] += 1
        await super().send_packed_command(command, check_health)


class RedisProbe:
    """Client-side Redis round trips (the waits for an answer: a command, or a pipeline),
    sends (per connection: on a cluster a pipeline sends to each node it needs, at
    once) and calls of one client."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.cluster = False

    def attach(self, redis: Redis) -> None:
        """Count `redis`'s traffic; call before it opens its first connection."""
        if not isinstance(redis, RedisCluster):
            pool = redis.connection_pool
            pool.connection_class = self._counting(pool.connection_class)
            return
        self.cluster = True  # each node's pool is made at its first command
        options = redis.nodes_manager.connection_kwargs
        options["connection_class"] = self._counting(options["connection_class"])
        self._count_waits(redis)

    def _count_waits(self, redis: RedisCluster) -> None:
        counts, command, pipeline = self.counts, redis.execute_command, redis.pipeline

        async def waited(*args: Any, **kwargs: Any) -> Any:
            counts["round_trips"] += 1
            return await command(*args, **kwargs)

        def counted(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            async def executed(*more: Any, **options: Any) -> Any:
                counts["round_trips"] += 1
                return await execute(*more, **options)

            setattr(pipe, "execute", executed)  # noqa: B010 - this one object's
            return pipe

        setattr(redis, "execute_command", waited)  # noqa: B010
        setattr(redis, "pipeline", counted)  # noqa: B010

    def _counting(self, base: type) -> type:
        return type(
            f"Counting{base.__name__}", (_CountingRedisConnection, base), {"bench_probe": self}
        )

    def snapshot(self) -> Counter[str]:
        return Counter(self.counts)


async def command_stats(redis: Redis) -> Counter[str]:
    """Commands the server has run, by name (scripts' inner commands included); on a
    cluster, summed over its primaries."""
    if isinstance(redis, RedisCluster):
        found: dict[str, Any] = await redis.info(
            "commandstats", target_nodes=RedisCluster.PRIMARIES
        )
        each = list(found.values())
    else:
        each = [await redis.info("commandstats")]
    total: Counter[str] = Counter()
    for info in each:
        total.update(
            {
                name.removeprefix("cmdstat_"): int(stats["calls"])
                for name, stats in info.items()
                if isinstance(stats, dict) and name != "cmdstat_info"
            }
        )
    return total
