"""What an embedded server is: start or reuse, stop if ours, pause and resume.

A server already running for a data directory is reused. Whoever launched it owns it
and stops it at exit; a server whose owner is gone (killed before it could stop it)
is adopted by the next run, which then stops it at exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from bot.embedded.process import (
    HOST,
    dir_lock,
    int_field,
    live_owner,
    live_process,
    psutil_module,
    read_state,
    this_process,
    write_state,
)
from bot.errors import EmbeddedServerError
from bot.logs import announce

logger = logging.getLogger("bot.embedded")


@dataclass
class EmbeddedServer:
    data_dir: Path
    port: int = 0
    _pid: int | None = field(default=None, init=False, repr=False)
    _owned: bool = field(default=False, init=False, repr=False)
    _paused: bool = field(default=False, init=False, repr=False)
    _left_because: str = field(default="", init=False, repr=False)
    kind: ClassVar[str]
    process_name: ClassVar[str]
    hint: ClassVar[str]
    state_name: ClassVar[str]  # the file under data_dir with port, pid and owner

    def __post_init__(self) -> None:
        # Absolute, because the servers run with another cwd (and maybe as another user).
        self.data_dir = Path(self.data_dir).absolute()

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def owned(self) -> bool:
        """Whether this object stops the server at stop(): it launched or adopted it."""
        return self._owned

    @property
    def state_file(self) -> Path:
        return self.data_dir / self.state_name

    def remembered_port(self) -> int | None:
        return int_field(read_state(self.state_file), "port")

    def start(self) -> None:
        if live_process(self._pid, self.process_name) is not None:
            return
        with dir_lock(self.data_dir):
            if self._attach():
                return
            remembered = None if self.port else self.remembered_port()  # 0: ours to choose
            self._launch()
            self._owned = True
            write_state(self.state_file, pid=self._pid, port=self.port, owner=this_process())
        moved = remembered is not None and remembered != self.port
        taken = f"; port {remembered} of the last run is taken by another program" if moved else ""
        self._announce("listening on", "; " + self.hint.format(host=HOST, port=self.port) + taken)

    def stop(self) -> None:
        with contextlib.suppress(EmbeddedServerError):  # it may have died while paused
            self.resume()
        if self._pid is not None and self._owned:
            with dir_lock(self.data_dir):
                self._shutdown()
                # Keep the port, so the next run listens where this one did.
                write_state(self.state_file, port=self.port)
            self._log("stopped on")
        elif self._pid is not None:
            self._announce("left running on", f": {self._left_because}")
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
        proc = live_process(self._pid, self.process_name)
        if proc is None:
            raise EmbeddedServerError(f"embedded {self.kind} ({self.data_dir}) is not running")
        for p in [proc, *self._helpers(proc)]:
            with contextlib.suppress(psutil_module().Error):
                p.send_signal(sig)

    def _adopt(self, pid: int, port: int, answers: bool) -> bool:
        """Reuse the server running for our data directory; own it if its owner is gone."""
        if not answers:
            raise EmbeddedServerError(
                f"{self.kind} pid {pid} runs for {self.data_dir} but does not answer on "
                f"{HOST}:{port}; stop it (or SIGCONT it if stopped), or use another data directory"
            )
        self._pid, self.port = pid, port
        state = read_state(self.state_file)
        owner = live_owner(state)
        if owner is not None:
            self._owned = False
            self._left_because = f"process {owner} started it and stops it"
            self._announce("already running on", f"; reusing it (pid {pid})")
        elif "owner" not in state:
            self._owned = False
            self._left_because = "it was not started by the bot (no owner recorded)"
            self._announce("already running on", f"; reusing it (pid {pid}), {self._left_because}")
        else:
            self._owned = True
            write_state(self.state_file, **{**state, "owner": this_process()})
            self._announce(
                "already running on",
                f"; adopting it (pid {pid}): the process that started it is gone, "
                "so this one stops it at exit",
            )
        return True

    def _announce(self, event: str, detail: str = "") -> None:
        # Whatever LOG_LEVEL: an operator needs it to psql / redis-cli in.
        where = f"{HOST}:{self.port} (data in {self.data_dir})"
        announce(logger, f"embedded {self.kind} {event} {where}{detail}")

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
