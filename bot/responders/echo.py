"""The offline default responder: deterministic, free, and honest about what it saw.

It streams too, word by word with a small delay (ECHO_STREAM_DELAY_SECONDS), so that
streaming can be seen in `bot chat` and tested without an LLM.
"""

from __future__ import annotations

import asyncio
import re

from bot.domain import TextSink
from bot.responders.base import ResponderRequest, ResponderResult, estimate_tokens

_WORDS = re.compile(r"\S+\s*")  # each word with the spaces after it


class EchoResponder:
    name = "echo"
    word_delay = 0.0  # between two pieces of a streamed reply

    def __init__(self, word_delay: float = 0.0) -> None:
        self.word_delay = word_delay

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        earlier = len(request.context)
        noun = "message" if earlier == 1 else "messages"
        text = (
            f'You said: "{request.text}" '
            f"({earlier} earlier {noun} in my context; model {request.model})"
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

    async def aclose(self) -> None:
        return None
