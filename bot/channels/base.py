"""What every channel adapter is, and the helpers they share.

An adapter only translates: platform event → IncomingMessage → Dispatcher, and
Reply → platform API call. All behaviour lives in the conversation service.
"""

from __future__ import annotations

import abc
import logging

from bot.channels.dispatch import Dispatcher
from bot.config import Settings


class ChannelAdapter(abc.ABC):
    """One platform connection, supervised by the worker."""

    name: str
    finite = False  # True for a channel whose end ends the worker (the console)

    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.log = logging.getLogger(f"bot.channels.{self.name}")

    @abc.abstractmethod
    async def run(self) -> None:
        """Connect and handle events until stop() is called; raise if the connection dies.

        The worker restarts a run that raised, with backoff.
        """

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop taking new events and close the SDK clients. Idempotent."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether the platform connection is up (for /readyz)."""


def split_text(text: str, limit: int) -> list[str]:
    """Cut a reply into parts of at most `limit` characters, at line or word breaks
    where possible, so that every part can be sent as one platform message."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit + 1)
        if cut <= limit // 2:
            cut = rest.rfind(" ", 0, limit + 1)
        if cut <= limit // 2:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n ") if cut < len(rest) else ""
    if rest or not parts:
        parts.append(rest)
    return [part for part in parts if part] or [text[:limit]]
