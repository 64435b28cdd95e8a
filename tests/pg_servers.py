"""Postgres servers of a test's own, on free ports: a primary ready to stream its WAL, and
a hot standby built from it with the real `pg_basebackup -R`. A test may stop one
(`pg_ctl stop -m immediate`, a crash as far as clients can tell), promote the standby,
pause its replay, and read how far it lags. Both are stopped and their directories
removed when the block ends, also on failure.

The binaries are those of the `embedded` extra (bot/embedded/postgres.py); as root they
run as its unprivileged user. Without them the tests skip, loudly, except in CI, where a
missing binary fails.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from bot.errors import EmbeddedServerError
from tests.support import free_port

HOST = "127.0.0.1"
WAIT = 60.0  # seconds any wait for a server may take on a loaded machine
POLL = 0.05


def _embedded() -> tuple[Callable[[Path], str | None], Callable[[str, Path, str | None], None]]:
    """bot/embedded/postgres.py's pgdata preparation and pg tool runner, or skip."""
    try:
        from bot.embedded.postgres import _prepare_pgdata, _run_pg, pg_bin

        pg_bin()
    except (ImportError, EmbeddedServerError) as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no Postgres binaries for servers of the test's own: {exc}")
    return _prepare_pgdata, _run_pg


@dataclass
class PgServer:
    """One server: its data directory, port and the system user it runs as."""

    pgdata: Path
    port: int
    user: str | None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def pg_ctl(self, command: str) -> None:
        _embedded()[1](f"pg_ctl {command}", self.pgdata, self.user)

    def start(self, *settings: str) -> None:
        """Start on its port, with `settings` (name=value) given on the command line, where
        a base backup does not copy them to a standby."""
        options = [f"-h {HOST}", f"-p {self.port}", "-k ''"]
        options += [f"-c {shlex.quote(setting)}" for setting in settings]
        log = shlex.quote(str(self.pgdata / "log"))
        self.pg_ctl(f"-l {log} -w -t {int(WAIT)} -o {shlex.quote(' '.join(options))} start")

    def stop(self) -> None:
        """`pg_ctl stop -m immediate`: every process quits at once, nothing is flushed or
        sent on, and the clients' connections drop; as a crash looks to them."""
        if self.running:
            self.pg_ctl("stop -m immediate -w")

    def promote(self) -> None:
        """End recovery; pg_ctl waits until the server takes writes."""
        self.pg_ctl(f"promote -w -t {int(WAIT)}")


async def query(server: PgServer, sql: str, *args: object, database: str = "postgres") -> object:
    """The first value of `sql`'s first row, on a connection of its own."""
    connection = await asyncpg.connect(server.url(database), timeout=5)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


async def _polled(check: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
    """Poll `check` until it returns true; an AssertionError after `within` s."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            last = exc  # starting, stopping or promoting: ask again
        await asyncio.sleep(POLL)
    raise AssertionError(f"{what}: not within {within} s (last error: {last!r})")


async def wait_writable(server: PgServer, within: float = WAIT) -> None:
    """Once the server is out of recovery and a new transaction may write."""

    async def writable() -> bool:
        return bool(await query(server, "SELECT current_setting('transaction_read_only') = 'off'"))

    await _polled(writable, f"{server.address} taking writes", within)


async def wait_streaming(
    primary: PgServer, replica: PgServer, synchronous: bool, within: float = WAIT
) -> None:
    """Once the standby is in recovery and the primary streams to it (as its synchronous
    standby, if `synchronous`)."""
    state = "sync" if synchronous else "async"

    async def streaming() -> bool:
        in_recovery = await query(replica, "SELECT pg_is_in_recovery()")
        found = await query(
            primary,
            "SELECT count(*) FROM pg_stat_replication"
            " WHERE state = 'streaming' AND sync_state = $1",
            state,
        )
        return bool(in_recovery) and found == 1

    await _polled(streaming, f"{replica.address} streaming from {primary.address}", within)


@dataclass(frozen=True)
class Lag:
    """How far a standby's replay is behind the primary's WAL."""

    bytes: int
    seconds: float | None  # since the last transaction it replayed (None: none yet)


async def replay_lag(primary: PgServer, replica: PgServer) -> Lag:
    position = await query(primary, "SELECT pg_current_wal_lsn()::text")
    behind = await query(
        replica, "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())", position
    )
    age = await query(
        replica, "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"
    )
    return Lag(max(int(behind), 0), None if age is None else float(age))  # type: ignore[call-overload,arg-type]


async def wait_caught_up(primary: PgServer, replica: PgServer, within: float = WAIT) -> None:
    """Once the standby has replayed all the primary had written when this was called."""
    position = await query(primary, "SELECT pg_current_wal_lsn()::text")

    async def replayed() -> bool:
        behind = await query(
            replica, "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())", position
        )
        return int(behind) <= 0  # type: ignore[call-overload]

    await _polled(replayed, f"{replica.address} replaying up to {position}", within)


async def pause_replay(replica: PgServer) -> None:
    """The standby keeps receiving WAL but applies none of it until resumed."""
    await query(replica, "SELECT pg_wal_replay_pause()")

    async def paused() -> bool:
        return await query(replica, "SELECT pg_get_wal_replay_pause_state()") == "paused"

    await _polled(paused, f"{replica.address} pausing its replay", WAIT)


async def resume_replay(replica: PgServer) -> None:
    await query(replica, "SELECT pg_wal_replay_resume()")


@contextmanager
def _server_directory(prefix: str) -> Iterator[Path]:
    # Not under pytest's basetemp: another pytest session starting on this machine makes
    # /tmp/pytest-of-<user> private again, and as root Postgres runs as another user.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _stopped_at_exit(server: PgServer) -> Iterator[PgServer]:
    try:
        yield server
    finally:
        try:
            server.stop()
        except EmbeddedServerError:
            if server.running:
                raise


@contextmanager
def primary_server(directory: Path, *settings: str) -> Iterator[PgServer]:
    """A new primary (trust auth, user postgres) whose WAL a standby can stream, started with
    `settings` (name=value) besides; stopped when the block ends."""
    prepare, run = _embedded()
    pgdata = directory / "primary"
    user = prepare(pgdata)
    run("initdb --auth=trust --encoding=utf8 -U postgres --no-sync", pgdata, user)
    server = PgServer(pgdata, free_port(), user)
    with _stopped_at_exit(server):
        server.start("wal_level=replica", "max_wal_senders=5", "hot_standby=on", *settings)
        yield server


@contextmanager
def streaming_replica(primary: PgServer, directory: Path) -> Iterator[PgServer]:
    """A hot standby of `primary`: its base backup taken by `pg_basebackup -R` (which writes
    standby.signal and the primary's address), then started streaming; stopped when the
    block ends."""
    prepare, run = _embedded()
    pgdata = directory / "replica"
    user = prepare(pgdata)
    backup = f"pg_basebackup -h {HOST} -p {primary.port} -U postgres -R -X stream -c fast"
    run(backup, pgdata, user)
    pgdata.chmod(0o700)  # Postgres starts on no data directory others may read
    (pgdata / "log").write_text("")  # the primary's, copied by the backup
    server = PgServer(pgdata, free_port(), user)
    with _stopped_at_exit(server):
        server.start("hot_standby=on")
        yield server


@asynccontextmanager
async def primary_and_replica(*, synchronous: bool) -> AsyncIterator[tuple[PgServer, PgServer]]:
    """A primary and its standby, streaming, in a directory of their own removed at the end.

    `synchronous`: the primary's commits wait until the standby has the WAL on disk
    (synchronous_standby_names, given on the primary's command line so that the standby,
    once promoted, does not wait for a standby of its own).
    """
    sync = ("synchronous_standby_names=*",) if synchronous else ()
    stack = ExitStack()
    try:
        # pg_ctl and pg_basebackup block: in a thread, as does the cleanup.
        root = await asyncio.to_thread(stack.enter_context, _server_directory("bot-replica-pg-"))
        primary = await asyncio.to_thread(stack.enter_context, primary_server(root, *sync))
        replica = await asyncio.to_thread(stack.enter_context, streaming_replica(primary, root))
        await wait_streaming(primary, replica, synchronous)
        yield primary, replica
    finally:
        await asyncio.to_thread(stack.close)
