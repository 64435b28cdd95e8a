"""The offline default responder: deterministic, free, and honest about what it saw."""

from __future__ import annotations

from bot.responders.base import ResponderRequest, ResponderResult, estimate_tokens


class EchoResponder:
    name = "echo"

    async def respond(self, request: ResponderRequest) -> ResponderResult:
        earlier = len(request.context)
        noun = "message" if earlier == 1 else "messages"
        text = (
            f'You said: "{request.text}" '
            f"({earlier} earlier {noun} in my context; model {request.model})"
        )
        return ResponderResult(
            text=text,
            model_used="echo",
            prompt_tokens=estimate_tokens(request.text),
            completion_tokens=estimate_tokens(text),
        )

    async def aclose(self) -> None:
        return None
