"""The configured responder: `openai` when LLM_BASE_URL is set, else the offline `echo`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.responders.base import Moderator, Responder
from bot.responders.echo import EchoResponder
from bot.urls import redact_url

if TYPE_CHECKING:
    from bot.responders.openai_compat import LLMOptions

log = logging.getLogger(__name__)


def llm_options(settings: Settings) -> LLMOptions:
    from bot.responders.openai_compat import LLMOptions

    if settings.llm_base_url is None:
        raise ValueError("LLM_BASE_URL is not set")
    return LLMOptions(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key,
        timeout=settings.llm_timeout_seconds,
        deadline=settings.llm_retry_deadline_seconds,
        connect_attempts=settings.llm_connect_attempts,
        max_concurrency=settings.llm_max_concurrency,
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
        context_token_budget=settings.llm_context_token_budget,
        system_prompt=settings.system_prompt,
    )


def build_responder(settings: Settings) -> Responder:
    if settings.llm_base_url is None:
        return EchoResponder(settings.echo_stream_delay_seconds)
    # Imported here: the `openai` package takes most of a second to load.
    from bot.responders.openai_compat import OpenAICompatResponder

    log.info(
        "answering with the OpenAI-compatible API at %s (default model %s)",
        redact_url(settings.llm_base_url),
        settings.default_model,
    )
    return OpenAICompatResponder(llm_options(settings))


def build_moderator(settings: Settings) -> Moderator | None:
    """The moderation check of MODERATION, or None when it is off (nothing to do)."""
    if settings.moderation == "off" or settings.llm_base_url is None:
        return None
    from bot.responders.moderation import ModerationClient, ModerationOptions

    log.info("moderating %s with %s", settings.moderation, settings.moderation_model)
    options = ModerationOptions(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key,
        model=settings.moderation_model,
        timeout=settings.moderation_timeout_seconds,
        connect_attempts=settings.llm_connect_attempts,
    )
    return ModerationClient(options)
