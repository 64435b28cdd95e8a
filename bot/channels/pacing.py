"""The platforms' budgets for the updates of growing replies.

Each reply is throttled on its own (bot/channels/live.py, at most one update an
interval), but platform limits count more than one reply: Telegram's messages per
chat and 30 a second in all, Discord's 5 writes per 5 s per channel and 50 requests a
second in all, Slack's tier 4 for chat.appendStream (100 a minute per workspace). A
reply's next message in the same chat shares the budget with the last one's.

A Pacer is a token bucket of one such budget, with margin. A message's first text and
its final text always go (they spend, even into debt: a reply is always shown and
always finished); an update in between goes only when every budget it counts against
has a token, else it is skipped, never waited for: its text goes with a later update.
So a busy bot shows replies in fewer, larger steps instead of queueing behind its own
limits, and leaves room for the next reply's first words.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

KEYS_KEPT = 10_000  # chats whose budget is remembered (least recently used dropped first)


class Pacer:
    def __init__(
        self,
        per_second: float,
        burst: float,
        *,
        updates_only: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.burst = burst  # writes that may go at once after a quiet spell
        # True: only the updates between a message's first and final text count (a
        # budget of one method, like Slack's chat.appendStream).
        self.updates_only = updates_only
        self.clock = clock
        self._tokens = burst
        self._at = clock()

    def ready(self) -> bool:
        """Whether an update may go now."""
        self._refill()
        return self._tokens >= 1

    def spend(self) -> None:
        """One write made (into debt if need be: first and final texts always go)."""
        self._refill()
        self._tokens -= 1

    def wait(self) -> float:
        """Seconds until an update may go (0 when it may now)."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.per_second)

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now


class PacerBook:
    """A Pacer per chat (or channel), made on first use, the least recent forgotten."""

    def __init__(
        self, per_second: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self._pacers: OrderedDict[str, Pacer] = OrderedDict()

    def __getitem__(self, key: str) -> Pacer:
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(self.per_second, self.burst, clock=self.clock)
            if len(self._pacers) > KEYS_KEPT:
                self._pacers.popitem(last=False)
        else:
            self._pacers.move_to_end(key)
        return pacer
