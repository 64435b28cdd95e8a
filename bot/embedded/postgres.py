"""Embedded PostgreSQL, run from the binaries the `pgserver` package ships."""

from __future__ import annotations

import functools
import logging
import os
import pwd
import shlex
import stat
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from bot.embedded.process import (
    HOST,
    accepts_connections,
    live_process,
    log_tail,
    pick_port,
)
from bot.embedded.server import EmbeddedServer
from bot.errors import EmbeddedServerError
from bot.logs import announce

logger = logging.getLogger("bot.embedded")

PG_SYSTEM_USER = "pgserver"
PG_START_TIMEOUT = 60
# Unix socket paths are limited to ~107 bytes. A longer pgdata gets no socket at all (clients use
# TCP anyway) rather than a socket in a temp dir that would be left behind by a crash.
_MAX_SOCKET_PATH = 100


def _pgserver() -> ModuleType:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
            import pgserver._commands
            import pgserver.utils
    except ImportError as exc:
        raise EmbeddedServerError("embedded Postgres needs the 'embedded' extra") from exc
    return pgserver


def pg_bin() -> Path:
    """The directory of the embedded server's binaries (postgres, pg_dump, …)."""
    return Path(_pgserver()._commands.POSTGRES_BIN_PATH)


@functools.cache
def pg_system_user() -> str | None:
    """Postgres refuses to run as root, so as root it runs as an unprivileged system user,
    created if missing: said on stderr, since it changes the machine."""
    if os.geteuid() != 0:
        return None
    utils, bin_dir = _pgserver().utils, pg_bin()
    existed = _user_exists(PG_SYSTEM_USER)
    try:
        utils.ensure_user_exists(PG_SYSTEM_USER)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise EmbeddedServerError(
            f"Postgres cannot run as root and creating user {PG_SYSTEM_USER!r} failed: {detail}"
        ) from exc
    created = "" if existed else ", created now with useradd"
    announce(
        logger,
        f"running as root: Postgres refuses to, so it runs as the system user "
        f"{PG_SYSTEM_USER!r}{created}; run the bot as an ordinary user to avoid this",
    )
    utils.ensure_prefix_permissions(bin_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
    return PG_SYSTEM_USER


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _prepare_pgdata(pgdata: Path) -> str | None:
    """Create pgdata, owned by the user Postgres will run as; return that user (None = us)."""
    pgdata.mkdir(parents=True, exist_ok=True)
    user = pg_system_user()
    if user is not None:
        _let_others_traverse(pgdata.parent)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    return user


def _let_others_traverse(directory: Path) -> None:
    """g+x,o+x on `directory` and each above it, so the system user reaches pgdata: enough
    to pass through, and unlike pgserver's own helper (g+rx,o+rx) it lets nobody list
    them (root's default DATA_DIR is under /root). Group too: the servers run with the
    system user's uid but root's gid."""
    traverse = stat.S_IXGRP | stat.S_IXOTH
    for folder in (directory, *directory.parents):
        mode = folder.stat().st_mode
        if mode & traverse != traverse:
            folder.chmod(stat.S_IMODE(mode) | traverse)


def _run_pg(command: str, pgdata: Path, user: str | None) -> None:
    name, *args = shlex.split(command)
    cmd = [str(pg_bin() / name), "-D", str(pgdata), *args]
    timeout = PG_START_TIMEOUT + 30
    # A temp file, not a pipe: the daemonized postmaster inherits it, so a pipe never hits EOF.
    with tempfile.TemporaryFile("w+") as out:
        try:
            done = subprocess.run(
                cmd, stdout=out, stderr=out, user=user, cwd=pgdata, timeout=timeout, check=False
            )
            failure = f"exit code {done.returncode}" if done.returncode else ""
        except subprocess.TimeoutExpired:
            failure = f"no answer in {timeout} s"
        out.seek(0)
        output = out.read().strip()
    if failure:
        raise EmbeddedServerError(
            f"{command} failed for {pgdata} ({failure}):\n{output}\n"
            f"--- last lines of {pgdata / 'log'}:\n{log_tail(pgdata / 'log')}"
        )


@dataclass
class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL on 127.0.0.1; `data_dir` is the pgdata directory (e.g. DATA_DIR/postgres)."""

    kind: ClassVar[str] = "Postgres"
    process_name: ClassVar[str] = "postgres"
    hint: ClassVar[str] = "psql -h {host} -p {port} -U postgres"
    state_name: ClassVar[str] = "embedded.json"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _helpers(self, proc: Any) -> list[Any]:
        # Backends run in their own process groups: a "hung server" must stop each of them.
        return list(proc.children(recursive=True))

    def _attach(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return False
        if live_process(pid, self.process_name) is None:
            # Left by a crash; if its pid now belongs to another process Postgres won't start.
            pid_file.unlink(missing_ok=True)
            return False
        return self._adopt(pid, port, accepts_connections(port))

    def _launch(self) -> None:
        pgdata = self.data_dir
        user = _prepare_pgdata(pgdata)
        if not (pgdata / "PG_VERSION").exists():
            initdb = "initdb --auth=trust --auth-local=trust --encoding=utf8 -U postgres"
            _run_pg(initdb, pgdata, user)
        self.port = pick_port(self.port, self.remembered_port())
        sockets = str(pgdata) if len(f"{pgdata}/.s.PGSQL.65535") < _MAX_SOCKET_PATH else ""
        opts = f"-h {HOST} -p {self.port} -k {shlex.quote(sockets)}"
        log = shlex.quote(str(pgdata / "log"))
        _run_pg(
            f"pg_ctl -l {log} -w -t {PG_START_TIMEOUT} -o {shlex.quote(opts)} start", pgdata, user
        )
        self._pid = int((pgdata / "postmaster.pid").read_text().split()[0])

    def _shutdown(self) -> None:
        if live_process(self._pid, self.process_name) is not None:
            _run_pg("pg_ctl -m fast -w stop", self.data_dir, pg_system_user())
