"""Between the responder and the adapter while a reply streams: each piece is handed
on as it comes, and what was handed on is kept (it is what the user may have seen).

An adapter that fails to show a piece (the platform is down, a 429 it gave up on)
gets no more pieces: the reply is still written whole, stored, and shown by the
adapter's final update. Its failure is logged once.
"""

from __future__ import annotations

import logging

from bot.domain import TextSink

log = logging.getLogger(__name__)


class Relay:
    def __init__(self, sink: TextSink, channel: str) -> None:
        self._sink = sink
        self._channel = channel
        self._pieces: list[str] = []
        self._broken = False

    @property
    def text(self) -> str:
        """Every piece so far, joined."""
        return "".join(self._pieces)

    async def __call__(self, piece: str) -> None:
        self._pieces.append(piece)
        if self._broken:
            return
        try:
            await self._sink(piece)
        except Exception as exc:  # noqa: BLE001 - the display failed, never the reply
            self._broken = True
            log.warning(
                "%s: cannot show the reply as it streams (%s: %s); it is sent when done",
                self._channel, type(exc).__name__, exc,
            )  # fmt: skip
