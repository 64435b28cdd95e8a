"""The offline default responder: deterministic, free, and honest about what it saw.

It streams too, word by word with a small delay (ECHO_STREAM_DELAY_SECONDS), so that
streaming can be seen in `bot chat` and tested without an LLM.
"""

from __future__ import annotations

import asyncio
import re

from bot.domain import TextSink
from bot.responders.base import (
    ResponderRequest,
    ResponderResult,
    SummaryRequest,
    estimate_tokens,
    transcript,
)

_WORDS = re.compile(r"\S+\s*")  # each word with the spaces after it
ECHO_SUMMARY_WORDS = 6  # of each message, in a stand-in summary


class EchoResponder:
    name = "echo"
    word_delay = 0.0  # between two pieces of a streamed reply

    def __init__(self, word_delay: float = 0.0) -> None:
        self.word_delay = word_delay

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        summaries = [m.summary_of or 0 for m in request.context if m.is_summary]
        earlier = len(request.context) - len(summaries)
        noun = "message" if earlier == 1 else "messages"
        before = f" after a summary of {summaries[0]}" if summaries else ""
        text = (
            f'You said: "{request.text}" '
            f"({earlier} earlier {noun}{before} in my context; model {request.model})"
        )
        if on_text is not None:
            await self._stream(text, on_text)
        return ResponderResult(
            text=text,
            model_used="echo",
            prompt_tokens=estimate_tokens(request.text),
            completion_tokens=estimate_tokens(text),
        )

    async def _stream(self, text: str, on_text: TextSink) -> None:
        head = text[: len(text) - len(text.lstrip())]  # leading spaces ride on the first word
        for number, word in enumerate(_WORDS.findall(text)):
            if number and self.word_delay:
                await asyncio.sleep(self.word_delay)
            await on_text(head + word if number == 0 else word)

    async def summarise(self, request: SummaryRequest) -> ResponderResult:
        """A stand-in summary: the summary so far, then the first words of each message,
        cut to the request's length (its oldest part goes first)."""
        said = "; ".join(
            f"{m.author or m.role}: {' '.join(m.content.split()[:ECHO_SUMMARY_WORDS])}"
            for m in request.messages
        )
        text = f"{request.previous} | {said}" if request.previous else said
        limit = request.max_tokens * 4  # about four characters a token
        text = text if len(text) <= limit else "…" + text[len(text) - limit + 1 :]
        return ResponderResult(
            text=text,
            model_used="echo",
            prompt_tokens=estimate_tokens(transcript(request)),
            completion_tokens=estimate_tokens(text),
        )

    async def aclose(self) -> None:
        return None
