"""A reply shown as it is written, the same way on every platform.

The pieces the service hands over are coalesced into platform updates, at most one
per `interval` (each platform's limits, with margin) and within the budget the
adapter's replies share (bot/channels/pacing.py); a reply that outgrows one
platform message is sealed at a sensible break and goes on in a new one. While a
message is still being written it ends with a cursor, so a reply cut off by a crash
never looks complete. The platform's part is a Surface: `show` puts a message's text
so far on screen (a post, an edit, a draft), `seal` gives it its final text.

`finish` ends the reply with its final text: what was streamed and what follows (a
note that it was interrupted, say). A reply that was never streamed (a command's, an
apology) goes through `finish` alone and is simply sent.

Where the growing message is on screen (`Surface.where`) is booked in Redis at each
update (bot/cache/streams.py), so that if this worker dies mid-reply another ends the
message with the interrupted note. Use a LiveReply as an async context manager: a
reply left without `finish` (the handler failed or was cancelled) is given up to that
sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self

from bot.cache.streams import StreamBooking
from bot.channels.base import break_at
from bot.channels.pacing import Pacer
from bot.domain import PostRef
from bot.errors import PlatformRejected

CURSOR = " ▍"  # on a message still being written


class Surface(Protocol):
    limit: int  # characters of one platform message
    # True: each show replaces the message's text (an edit, a draft). False: a show
    # can only add to what is shown (Slack's streams), so a seal never takes any back.
    rewrites: bool

    async def show(self, text: str) -> None:
        """Put the current message's text so far on screen."""

    async def seal(self, text: str) -> None:
        """Give the current message its final text; the next `show` starts a new one."""

    @property
    def where(self) -> Mapping[str, str] | None:
        """The current message's place on screen, for the adapter to end it after a
        crash (bot/cache/streams.py); None when nothing lasting is shown (a draft)."""

    @property
    def posts(self) -> Sequence[PostRef]:
        """The platform messages sealed so far, as reactions name them (feedback)."""


class LiveReply:
    def __init__(
        self,
        surface: Surface,
        interval: float,
        booking: StreamBooking | None = None,
        pacers: Sequence[Pacer] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.surface = surface
        self.interval = interval
        self.booking = booking
        self.pacers = pacers  # the platform's budgets this reply shares (pacing.py)
        self.clock = clock
        self.updates = 0  # platform calls made: shows and seals
        self._reply = ""  # every piece so far
        self._done = 0  # how much of it is in sealed messages
        self._shown = ""  # the current message's text as last shown
        self._last = float("-inf")
        self._refused: PlatformRejected | None = None  # the platform will not take it
        # Room for the cursor: what is shown fits in a message as it will be sealed.
        self._room = max(1, surface.limit - len(CURSOR))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.booking is not None:
            self.booking.abandoned()  # unless finished: its lease lapses, a sweep ends it

    @property
    def streamed(self) -> str:
        return self._reply

    @property
    def posts(self) -> Sequence[PostRef]:
        """The platform messages the reply was sealed in (one per part), once finished."""
        return self.surface.posts

    async def add(self, piece: str) -> None:
        """One piece of the reply: shown now, or with the next update."""
        self._reply += piece
        await self._seal_full(self._room)
        if self.clock() - self._last >= self.interval:
            await self._show()

    async def finish(self, final: str) -> None:
        """Seal the reply with its final text (the streamed text and what follows). A
        platform that refused an update (no permission to write there) is not asked
        again: its refusal is raised."""
        if self._refused is not None:
            raise self._refused
        if final.startswith(self._reply):
            self._reply = final
        elif final:  # not a continuation (an apology after a part): below what was shown
            self._reply = f"{self._reply}\n\n{final}" if self._reply else final
        await self._seal_full(self.surface.limit)
        current = self._reply[self._done :]
        if current.strip() or self._shown:
            await self._seal(current.rstrip())
        if self.booking is not None:
            await self.booking.ended()

    async def _seal_full(self, limit: int) -> None:
        """Seal the messages the reply has outgrown, each cut at a sensible break (on a
        surface that can only append, not before the end of what it shows)."""
        while len(current := self._reply[self._done :]) > limit:
            shown = 0 if self.surface.rewrites else len(self._shown.rstrip())
            cut = break_at(current, limit, after=shown)
            await self._seal(current[:cut].rstrip())
            rest = current[cut:]
            self._done += cut + (len(rest) - len(rest.lstrip("\n ")))

    async def _show(self) -> None:
        current = self._reply[self._done :]
        if not current.strip() or current == self._shown:
            return
        update = bool(self._shown)  # else the message's first text, which always goes
        if update and not all(pacer.ready() for pacer in self.pacers):
            return  # a budget is spent: the text goes with a later update
        self._spend(update)
        self._last = self.clock()
        self._shown = current
        self.updates += 1
        try:
            await self.surface.show(current.rstrip() + CURSOR)
        except PlatformRejected as exc:
            self._refused = exc
            raise
        if self.booking is not None and (where := self.surface.where) is not None:
            await self.booking.shown(where, current.rstrip())

    def _spend(self, update: bool) -> None:
        for pacer in self.pacers:
            if update or not pacer.updates_only:
                pacer.spend()

    async def _seal(self, text: str) -> None:
        self._spend(update=False)  # a message's final text always goes
        self._shown = ""
        self._last = self.clock()
        self.updates += 1
        await self.surface.seal(text)


def ended_text(shown: str, note: str, limit: int) -> str:
    """What a message cut off mid-stream shows once another worker ends it: its text,
    then the note; the text cut short (…) when both would outgrow the message."""
    room = limit - len(note) - 2
    text = shown if len(shown) <= room else shown[: room - 1].rstrip() + "…"
    return f"{text}\n\n{note}"
