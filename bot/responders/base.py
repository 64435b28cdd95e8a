"""The Responder interface: turn a conversation's context and a new message into a reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.domain import ContextMessage, TextSink


@dataclass(frozen=True, slots=True)
class ResponderRequest:
    model: str
    text: str
    context: Sequence[ContextMessage]  # oldest first
    channel: str
    author: str | None = None  # who wrote `text`, in a shared conversation
    channel_settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResponderResult:
    text: str
    model_used: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Responder(Protocol):
    name: str

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        """Produce the reply; raise bot.errors.ResponderError when it cannot. With
        `on_text`, stream it: each piece is awaited as it comes (the next is not read
        before the sink returns), and the result's text is the pieces joined."""
        ...

    async def aclose(self) -> None: ...


class Moderator(Protocol):
    """Says whether a text is flagged (bot/responders/moderation.py); raises
    bot.errors.ModerationUnavailable when it cannot tell."""

    async def flagged(self, text: str) -> bool: ...

    async def aclose(self) -> None: ...


def estimate_tokens(text: str) -> int:
    """A rough count (about four characters a token) for when no API reports usage."""
    return max(1, (len(text) + 3) // 4)
