"""A PgBouncer in transaction mode in front of a Postgres database, on a free port.

`bot bench --pgbouncer` measures the bot behind it, and the tests run the bot through it:
the pooler most deployments put in front of Postgres, from the `pgbouncer` package.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bot.embedded.postgres import pg_system_user
from bot.embedded.process import HOST, accepts_connections, log_tail, pick_port
from bot.errors import EmbeddedServerError
from bot.urls import asyncpg_dsn

START_TIMEOUT_SECONDS = 10.0
_SEARCHED = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("pgbouncer")
    return found or next((path for path in _SEARCHED if os.access(path, os.X_OK)), None)


@contextmanager
def local_pgbouncer(database_url: str, *, pool_size: int = 20) -> Iterator[str]:
    """Start PgBouncer (pool_mode = transaction, `pool_size` server connections) in front
    of the database of `database_url`; yield the URL of the same database through it."""
    binary = pgbouncer_binary()
    if binary is None:
        raise EmbeddedServerError("no pgbouncer on this machine: install the pgbouncer package")
    with tempfile.TemporaryDirectory(prefix="bot-pgbouncer-") as directory:
        folder, port = Path(directory), pick_port(0, None)
        database = _write_config(folder, database_url, port, pool_size)
        user = pg_system_user()  # PgBouncer refuses to run as root
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (folder, *folder.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        process = subprocess.Popen(
            [binary, str(folder / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=user,
        )
        try:
            _wait_listening(process, port, folder / "pgbouncer.log")
            yield f"postgresql://bot@{HOST}:{port}/{database}"
        finally:
            process.terminate()
            try:
                process.wait(START_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _write_config(folder: Path, database_url: str, port: int, pool_size: int) -> str:
    """pgbouncer.ini: the server's credentials stay in this file (mode 0600), clients
    need none (auth_type = any), and it listens on 127.0.0.1 only. Returns the name."""
    parts = urlsplit(asyncpg_dsn(database_url))
    database = unquote(parts.path.lstrip("/")) or "postgres"
    server = [
        f"host={parts.hostname or HOST}",
        f"port={parts.port or 5432}",
        f"dbname={database}",
        f"user={unquote(parts.username or 'postgres')}",
    ]
    if parts.password:
        server.append(f"password={unquote(parts.password)}")
    config = folder / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n{database} = {' '.join(server)}\n\n[pgbouncer]\n"
        f"listen_addr = {HOST}\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = 1000\n"
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
    )
    config.chmod(0o600)
    return database


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not accepts_connections(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise EmbeddedServerError(f"pgbouncer did not start: {log_tail(log) or 'no log'}")
        time.sleep(0.05)
