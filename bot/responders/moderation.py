"""The moderation check: `POST {LLM_BASE_URL}/moderations` of any OpenAI-compatible API,
`{"input": text, "model": MODERATION_MODEL}`; a text is flagged when `results[0].flagged`.

Through the same `openai` client and the same retry policy as the responder (`llm_retry`:
timeouts, 429 and 5xx tried again, a refused connection only a few times), bounded as a
whole by MODERATION_TIMEOUT_SECONDS. What finally fails is ModerationUnavailable, and
MODERATION_FAIL decides what the service does then (bot/service.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import openai
from openai import AsyncOpenAI
from pydantic import SecretStr

from bot.errors import ModerationUnavailable, ResponderError, ResponderTimeout
from bot.responders.openai_compat import api_client, llm_retry, map_error


@dataclass(frozen=True, slots=True)
class ModerationOptions:
    base_url: str
    api_key: SecretStr | None
    model: str
    timeout: float  # one check, all its tries included
    connect_attempts: int


class ModerationClient:
    def __init__(self, options: ModerationOptions, client: AsyncOpenAI | None = None) -> None:
        self.options = options
        self._client = client or api_client(options.base_url, options.api_key, options.timeout)

    async def flagged(self, text: str) -> bool:
        """Whether the endpoint flags `text`; ModerationUnavailable if it does not say."""
        deadline = asyncio.get_running_loop().time() + self.options.timeout
        retrying = llm_retry(self.options.timeout, self.options.connect_attempts)

        async def attempt() -> bool:  # a coroutine function: tenacity awaits it
            return await self._attempt(text, deadline)

        try:
            return await retrying(attempt)
        except ResponderError as exc:
            raise ModerationUnavailable(f"moderation: {exc}") from exc

    async def _attempt(self, text: str, deadline: float) -> bool:
        try:
            async with asyncio.timeout_at(deadline):
                answer = await self._client.moderations.create(input=text, model=self.options.model)
        except TimeoutError:
            raise ResponderTimeout("the moderation endpoint did not answer in time") from None
        except openai.OpenAIError as exc:
            raise map_error(exc, self.options.base_url) from exc
        results = getattr(answer, "results", None)
        flagged = getattr(results[0], "flagged", None) if results else None
        if not isinstance(flagged, bool):
            raise ResponderError("the moderation endpoint answered without results[0].flagged")
        return flagged

    async def aclose(self) -> None:
        await self._client.close()
