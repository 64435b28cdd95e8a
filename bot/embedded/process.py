"""Process, port and state-file helpers shared by the embedded servers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bot.errors import EmbeddedServerError

HOST = "127.0.0.1"


def pick_port(requested: int, remembered: int | None) -> int:
    if requested:
        return requested
    # Prefer the last run's port, so the operator's psql / redis-cli command keeps working.
    for port in (remembered or 0, 0):
        with contextlib.suppress(OSError), socket.socket() as sock:
            # As Postgres and Redis bind: with SO_REUSEADDR, so the connections the last
            # run's server closed (TIME-WAIT on its port for a minute) do not count as a
            # use of the port; a program listening there still does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, port))
            return int(sock.getsockname()[1])
    raise EmbeddedServerError(f"no free TCP port on {HOST}")


def accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
        return True
    return False


def psutil_module() -> Any:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError as exc:
        raise EmbeddedServerError("embedded servers need the 'embedded' extra") from exc
    return psutil


def live_process(pid: int | None, name: str) -> Any:
    """The live process `pid` if it is a `name`; None for dead, zombie or reused pids."""
    psutil = psutil_module()
    try:
        proc = psutil.Process(pid) if pid else None
        ok = proc and proc.status() != psutil.STATUS_ZOMBIE and proc.name().startswith(name)
    except psutil.Error:
        return None
    return proc if ok else None


def log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no log at {path})"


def read_state(path: Path) -> dict[str, Any]:
    """A server's state file (port, pid, owner); empty if absent or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def int_field(state: dict[str, Any], name: str) -> int | None:
    value = state.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def write_state(path: Path, **fields: Any) -> None:
    path.write_text(json.dumps(fields))


@contextlib.contextmanager
def dir_lock(data_dir: Path) -> Iterator[None]:
    # Two processes booting at once on one data dir must not both launch a server.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with (data_dir.parent / f".{data_dir.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def this_process() -> dict[str, float | int]:
    """Who starts (and so must stop) a server: our pid and its start time, which tells
    a live starter from a later process that got its pid."""
    return {"pid": os.getpid(), "started": _start_time(os.getpid()) or 0.0}


def live_owner(state: dict[str, Any]) -> int | None:
    """The pid of the process recorded as the server's owner, if it still runs."""
    owner = state.get("owner")
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    started = _start_time(owner["pid"])
    return owner["pid"] if started is not None and started == owner.get("started") else None


def _start_time(pid: int) -> float | None:
    psutil = psutil_module()
    try:
        return round(float(psutil.Process(pid).create_time()), 2)
    except psutil.Error:
        return None
