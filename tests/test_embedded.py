"""Real embedded Postgres / Redis servers: restart on the same port, persistence, reuse, pause."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import redis

from bot.embedded import EmbeddedPostgres, EmbeddedRedis
from bot.embedded.process import live_process
from bot.errors import EmbeddedServerError

S = TypeVar("S", EmbeddedPostgres, EmbeddedRedis)


@pytest.fixture
def track() -> Iterator[Callable[[S], S]]:
    """Register a server for stop() at teardown (last registered stops first)."""
    with contextlib.ExitStack() as stack:

        def register(server: S) -> S:
            stack.callback(server.stop)
            return server

        yield register


def pg_query(url: str, sql: str, timeout: float = 5.0) -> list[Any]:
    """Run `sql` (several statements allowed) and return the rows of the last one."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            *setup, last = sql.split(";")
            if setup:
                await conn.execute(";".join(setup))
            return list(await conn.fetch(last))
        finally:
            await conn.close()

    return asyncio.run(run())


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port held by a listener that is not ours (and never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_postgres_data_and_port_survive_restart(
    tmp_path: Path,
    track: Callable[[EmbeddedPostgres], EmbeddedPostgres],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pg = track(EmbeddedPostgres(tmp_path / "postgres"))
    pg.start()
    assert pg.owned and pg.pid and pg.port
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    # Printed whatever LOG_LEVEL: the operator needs it to connect.
    assert f"listening on 127.0.0.1:{pg.port}" in capsys.readouterr().err
    pg_query(pg.url, "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept')")
    port = pg.port

    pg.stop()
    pg.stop()  # idempotent
    assert not listening(port) and pg.pid is None

    pg.start()
    pg.start()  # idempotent
    assert pg.port == port
    assert [r["body"] for r in pg_query(pg.url, "SELECT body FROM notes")] == ["kept"]


def test_second_postgres_on_same_dir_reuses_it_without_owning_it(
    tmp_path: Path, track: Callable[[EmbeddedPostgres], EmbeddedPostgres]
) -> None:
    first = track(EmbeddedPostgres(tmp_path / "postgres"))
    first.start()
    second = track(EmbeddedPostgres(tmp_path / "postgres"))
    second.start()
    assert not second.owned
    assert (second.port, second.pid) == (first.port, first.pid)

    second.stop()
    assert pg_query(first.url, "SELECT 1 AS one")[0]["one"] == 1
    first.stop()
    assert not listening(first.port)


def test_postgres_pause_hangs_clients_until_resume(
    tmp_path: Path, track: Callable[[EmbeddedPostgres], EmbeddedPostgres]
) -> None:
    pg = track(EmbeddedPostgres(tmp_path / "postgres"))
    pg.start()
    pg.pause()
    with pytest.raises(TimeoutError):
        pg_query(pg.url, "SELECT 1", timeout=0.5)
    pg.resume()
    assert pg_query(pg.url, "SELECT 1 AS one")[0]["one"] == 1
    pg.pause()
    pg.stop()  # stopping a paused server resumes it first instead of hanging
    assert not listening(pg.port)


def test_postgres_ignores_stale_postmaster_pid(
    tmp_path: Path, track: Callable[[EmbeddedPostgres], EmbeddedPostgres]
) -> None:
    pg = track(EmbeddedPostgres(tmp_path / "postgres"))
    pg.start()
    pg.stop()
    # As after a crash, with the pid since reused by a live process that is not Postgres.
    lines = [str(os.getpid()), str(pg.data_dir), "0", str(pg.port), "", "127.0.0.1", "", "ready"]
    (pg.data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")
    pg.start()
    assert pg.owned and pg.pid != os.getpid()
    assert pg_query(pg.url, "SELECT 1 AS one")[0]["one"] == 1


def test_postgres_port_in_use_raises_with_log_tail(
    tmp_path: Path, busy_port: int, track: Callable[[EmbeddedPostgres], EmbeddedPostgres]
) -> None:
    pg = track(EmbeddedPostgres(tmp_path / "postgres", port=busy_port))
    with pytest.raises(EmbeddedServerError, match=r"(?s)pg_ctl.*start.*Address already in use"):
        pg.start()
    assert not pg.owned


def test_redis_data_and_port_survive_stop_and_kill(
    tmp_path: Path, track: Callable[[EmbeddedRedis], EmbeddedRedis]
) -> None:
    server = track(EmbeddedRedis(tmp_path / "redis"))
    server.start()
    port = server.port
    assert server.owned and server.url == f"redis://127.0.0.1:{port}/0"
    with redis.Redis.from_url(server.url) as client:
        client.set("greeting", "hello")

    server.stop()
    assert not listening(port)
    server.start()
    assert server.port == port
    with redis.Redis.from_url(server.url) as client:
        assert client.get("greeting") == b"hello"
        client.set("after", "restart")

    server.kill()
    assert not listening(port)
    server.start()
    assert server.port == port and server.owned
    with redis.Redis.from_url(server.url) as client:
        assert client.mget("greeting", "after") == [b"hello", b"restart"]


def test_second_redis_on_same_dir_reuses_it_without_owning_it(
    tmp_path: Path, track: Callable[[EmbeddedRedis], EmbeddedRedis]
) -> None:
    first = track(EmbeddedRedis(tmp_path / "redis"))
    first.start()
    second = track(EmbeddedRedis(tmp_path / "redis"))
    second.start()
    assert not second.owned
    assert (second.port, second.pid) == (first.port, first.pid)
    second.stop()
    with redis.Redis.from_url(first.url) as client:
        assert client.ping()


def test_redis_pause_times_out_clients_until_resume(
    tmp_path: Path, track: Callable[[EmbeddedRedis], EmbeddedRedis]
) -> None:
    server = track(EmbeddedRedis(tmp_path / "redis"))
    server.start()
    server.pause()
    with redis.Redis.from_url(server.url, socket_timeout=0.5) as client:
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.resume()
        assert client.ping()


def test_redis_ignores_stale_state_file(
    tmp_path: Path, busy_port: int, track: Callable[[EmbeddedRedis], EmbeddedRedis]
) -> None:
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    # As after a crash: the pid now belongs to a live non-Redis process, the port to a stranger.
    (data_dir / "server.json").write_text(json.dumps({"pid": os.getpid(), "port": busy_port}))
    server = track(EmbeddedRedis(data_dir))
    server.start()
    assert server.owned and server.pid != os.getpid() and server.port != busy_port
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()


def test_redis_port_in_use_raises_with_log_tail(
    tmp_path: Path, busy_port: int, track: Callable[[EmbeddedRedis], EmbeddedRedis]
) -> None:
    server = track(EmbeddedRedis(tmp_path / "redis", port=busy_port))
    with pytest.raises(EmbeddedServerError, match="did not come up") as excinfo:
        server.start()
    assert "Address already in use" in str(excinfo.value)
    assert not server.owned and server.pid is None


TCP_TIME_WAIT = "06"  # the state column of /proc/net/tcp


def time_waits_on(port: int) -> int:
    """Connections in TIME-WAIT whose local end is `port` (Linux's /proc/net/tcp)."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("needs Linux's /proc/net/tcp to see TIME-WAIT")
    rows = [line.split() for line in table.read_text().splitlines()[1:]]
    return sum(
        1 for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == TCP_TIME_WAIT
    )


def closed_by_the_server(server: EmbeddedPostgres | EmbeddedRedis, clients: int = 3) -> None:
    """Connections the server closes first (Postgres on Terminate, Redis on QUIT): their
    server end waits in TIME-WAIT for a minute, on the server's port."""
    if isinstance(server, EmbeddedPostgres):
        for _ in range(clients):
            pg_query(server.url, "SELECT 1")
        return
    for _ in range(clients):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"QUIT\r\n")
            while sock.recv(1024):  # until the server closes
                pass


@pytest.mark.parametrize("server_class", [EmbeddedPostgres, EmbeddedRedis])
def test_the_next_run_listens_on_the_same_port_though_it_is_in_time_wait(
    tmp_path: Path,
    server_class: type[EmbeddedPostgres] | type[EmbeddedRedis],
    track: Callable[[Any], Any],
) -> None:
    """Issue 17, item 6: the port changed on every restart (59101 -> 47773 -> 57231)
    because the last run's closed connections sat in TIME-WAIT on it."""
    ports = []
    for _run in range(3):  # a new object each time, as a new `bot` process
        server = track(server_class(tmp_path / "data"))
        server.start()
        ports.append(server.port)
        closed_by_the_server(server)
        server.stop()
        assert time_waits_on(server.port) > 0, "the case to test: the port in TIME-WAIT"

    assert ports == [ports[0]] * 3


def test_a_port_another_program_took_meanwhile_is_not_used(
    tmp_path: Path,
    track: Callable[[EmbeddedRedis], EmbeddedRedis],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with EmbeddedRedis(tmp_path / "redis") as earlier:  # a run that ended
        taken = earlier.port
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", taken))
        stranger.listen()
        later = track(EmbeddedRedis(tmp_path / "redis"))
        later.start()

    assert later.port != taken
    said = capsys.readouterr().err.splitlines()[-1]
    assert said.endswith(f"; port {taken} of the last run is taken by another program")


@pytest.mark.parametrize("server_class", [EmbeddedRedis, EmbeddedPostgres])
def test_a_server_orphaned_by_a_killed_run_is_adopted_and_stopped_at_exit(
    tmp_path: Path,
    server_class: type[EmbeddedRedis] | type[EmbeddedPostgres],
    track: Callable[[Any], Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    # A run that started the server and was killed before it could stop it.
    killed_run = (
        f"from bot.embedded import {server_class.__name__} as Server\n"
        f"Server({str(data_dir)!r}).start()\n"
        "import os, signal\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", killed_run], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    orphan = json.loads((data_dir / server_class.state_name).read_text())
    assert orphan["owner"]["pid"] != os.getpid()

    server = track(server_class(data_dir))
    server.start()

    assert server.owned and server.port == orphan["port"]
    assert "adopting it" in capsys.readouterr().err
    pid = server.pid
    server.stop()
    assert live_process(pid, server.process_name) is None
    assert not listening(orphan["port"])


def test_a_server_the_bot_did_not_start_is_left_running_saying_why(
    tmp_path: Path,
    track: Callable[[EmbeddedRedis], EmbeddedRedis],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = track(EmbeddedRedis(tmp_path / "redis"))
    first.start()
    state = json.loads(first.state_file.read_text())
    del state["owner"]  # as if someone started it by hand
    first.state_file.write_text(json.dumps(state))

    second = track(EmbeddedRedis(tmp_path / "redis"))
    second.start()
    assert not second.owned
    second.stop()

    said = capsys.readouterr().err.splitlines()[-1]
    assert said.startswith("embedded Redis left running on 127.0.0.1:")
    assert said.endswith(": it was not started by the bot (no owner recorded)")
    assert listening(first.port)
