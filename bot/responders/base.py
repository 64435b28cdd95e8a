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


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    """Summarise `messages` (oldest first), continuing the summary so far (`previous`),
    in at most `max_tokens`, as `instructions` say (SUMMARY_PROMPT)."""

    model: str
    messages: Sequence[ContextMessage]
    channel: str
    instructions: str
    max_tokens: int
    previous: str | None = None


class Responder(Protocol):
    name: str

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        """Produce the reply; raise bot.errors.ResponderError when it cannot. With
        `on_text`, stream it: each piece is awaited as it comes (the next is not read
        before the sink returns), and the result's text is the pieces joined."""
        ...

    async def summarise(self, request: SummaryRequest) -> ResponderResult:
        """A summary of the request's messages (and the summary so far), as the text of
        the result; raise bot.errors.ResponderError when it cannot."""
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


def transcript(request: SummaryRequest) -> str:
    """What is to be summarised, as one text: the summary so far, then each message with
    who wrote it."""
    speaker = {"user": "User", "assistant": "Assistant"}
    lines = [f"Summary so far: {request.previous}", ""] if request.previous else []
    for message in request.messages:
        who = message.author or speaker.get(message.role, message.role)
        lines.append(f"{who}: {message.content}")
    return "\n".join(lines)
