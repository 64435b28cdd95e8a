"""Local servers that speak each platform's protocol: the Telegram Bot API, Discord's
REST API and gateway, Slack's Web API and Socket Mode, and an OpenAI-compatible LLM.

The test suite drives the adapters' real SDK code paths against them, and `bot bench
--streaming` measures streamed replies through them. What the SDKs send is checked
against the platforms' published specs, vendored in `specs/` (each with its licence
and provenance); mismatches collect in each server's `violations`. They are never
part of a running bot.
"""
