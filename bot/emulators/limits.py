"""Rate limits as the platforms enforce them, for the emulators that are asked to
(`enforce_limits`): `bot bench --streaming` counts the 429s a bot earns. Off by
default, so that a test's burst of messages is not refused.

Token buckets per key are the bot's own PacerBook (bot/channels/pacing.py), asked
with `over`; a Window is a fixed window per key that says what is left (Discord's
buckets, whose X-RateLimit headers discord.py reads and waits on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from bot.channels.pacing import PacerBook


def over(budgets: PacerBook, key: str) -> float | None:
    """None when a call under `key` may go (and is counted); else the seconds until it
    may (a token bucket per key: Telegram's "about one message a second per chat,
    briefly more", Slack's tiers)."""
    pacer = budgets[key]
    if not pacer.ready():
        return pacer.wait()
    pacer.spend()
    return None


class Window:
    def __init__(
        self, limit: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.seconds = seconds
        self.clock = clock
        self._state: dict[str, tuple[float, int]] = {}  # key -> (window start, calls)

    def take(self, key: str) -> tuple[bool, int, float]:
        """Whether the call may go, the calls left in the window after it, and the
        seconds until the window resets."""
        now = self.clock()
        start, used = self._state.get(key, (now, 0))
        if now - start >= self.seconds:
            start, used = now, 0
        reset = self.seconds - (now - start)
        if used >= self.limit:
            self._state[key] = (start, used)
            return False, 0, reset
        self._state[key] = (start, used + 1)
        return True, self.limit - used - 1, reset


def retry_seconds(wait: float) -> int:
    """A Retry-After in whole seconds, as Telegram and Slack give it."""
    return max(1, math.ceil(wait))
