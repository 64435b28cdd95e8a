"""Which channels exist, which settings turn each on, and how to build one.

This is the one place that reads a channel's settings: `spec.options(settings)` picks
out the few an adapter uses (bot/channels/options.py) and refuses combinations it cannot
run with, before `build` imports the adapter's module and with it the platform SDK.
Tests build adapters from the same functions (`discord_options(settings)`, ...).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from bot.channels.options import ChannelOptions, DiscordOptions, SlackOptions, TelegramOptions
from bot.config import Settings
from bot.errors import ConfigError

if TYPE_CHECKING:
    from bot.channels.base import ChannelAdapter
    from bot.channels.dispatch import Dispatcher

_TELEGRAM_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what setWebhook accepts


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    module: str
    adapter: str
    needs: str  # the settings that enable it, for operators
    options: Callable[[Settings], ChannelOptions]  # the adapter's own; ConfigError if unusable

    def configured(self, settings: Settings) -> bool:
        if self.name == "discord":
            return settings.discord_bot_token is not None
        if self.name == "telegram":
            return settings.telegram_bot_token is not None
        if self.name == "slack":
            return settings.slack_bot_token is not None and (
                settings.slack_app_token is not None or settings.slack_signing_secret is not None
            )
        return False


def discord_options(settings: Settings) -> DiscordOptions:
    token, count = settings.discord_bot_token, settings.discord_shard_count
    if token is None:
        raise ConfigError("the Discord channel needs DISCORD_BOT_TOKEN")
    shard_ids = tuple(settings.discord_shard_ids or ())
    if shard_ids and count is None:
        raise ConfigError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT")
    if count is not None and any(not 0 <= i < count for i in shard_ids):
        raise ConfigError("every DISCORD_SHARD_IDS entry must be below DISCORD_SHARD_COUNT")
    return DiscordOptions(
        token=token,
        api_base_url=settings.discord_api_base_url,
        gateway_url=settings.discord_gateway_url,
        shard_count=count,
        shard_ids=shard_ids,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        stream_interval_seconds=settings.discord_stream_interval_seconds,
    )


def telegram_options(settings: Settings) -> TelegramOptions:
    if settings.telegram_bot_token is None:
        raise ConfigError("TELEGRAM_BOT_TOKEN is not set")
    return TelegramOptions(
        token=settings.telegram_bot_token,
        api_base_url=settings.telegram_api_base_url,
        webhook_url=settings.telegram_webhook_url,
        webhook_secret=_telegram_webhook_secret(settings),
        webhook_listen=settings.telegram_webhook_listen,
        webhook_port=settings.telegram_webhook_port,
        webhook_max_body_bytes=settings.webhook_max_body_bytes,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        stream_interval_seconds=settings.telegram_stream_interval_seconds,
    )


def _telegram_webhook_secret(settings: Settings) -> SecretStr | None:
    """The secret Telegram must send with each webhook request; required in webhook mode."""
    if not settings.telegram_webhook_url:
        return None
    secret = settings.telegram_webhook_secret
    if secret is None or not _TELEGRAM_SECRET.match(secret.get_secret_value()):
        raise ConfigError(
            "TELEGRAM_WEBHOOK_URL needs TELEGRAM_WEBHOOK_SECRET: 1-256 of A-Z a-z 0-9 _ -"
        )
    return secret


def slack_options(settings: Settings) -> SlackOptions:
    if settings.slack_bot_token is None:
        raise ConfigError("SLACK_BOT_TOKEN is not set")
    if settings.slack_app_token is None and settings.slack_signing_secret is None:
        raise ConfigError("Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET")
    return SlackOptions(
        bot_token=settings.slack_bot_token,
        app_token=settings.slack_app_token,
        signing_secret=settings.slack_signing_secret,
        api_base_url=settings.slack_api_base_url,
        listen=settings.slack_listen,
        port=settings.slack_port,
        webhook_max_body_bytes=settings.webhook_max_body_bytes,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        stream_interval_seconds=settings.slack_stream_interval_seconds,
        feedback_buttons=settings.slack_feedback_buttons,
    )


PLATFORM_CHANNELS = (
    ChannelSpec(
        "discord", "bot.channels.discord", "DiscordAdapter", "DISCORD_BOT_TOKEN", discord_options
    ),
    ChannelSpec(
        "telegram",
        "bot.channels.telegram",
        "TelegramAdapter",
        "TELEGRAM_BOT_TOKEN",
        telegram_options,
    ),
    ChannelSpec(
        "slack",
        "bot.channels.slack",
        "SlackAdapter",
        "SLACK_BOT_TOKEN, with SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP)",
        slack_options,
    ),
)


def select(settings: Settings, names: Sequence[str] | None) -> list[ChannelSpec]:
    """The channels to start: those named (from parse_names; each must be configured),
    else every configured one.

    The console is not in the list: it has no credentials and is built by the caller.
    """
    if names is None:
        return [spec for spec in PLATFORM_CHANNELS if spec.configured(settings)]
    by_name = {spec.name: spec for spec in PLATFORM_CHANNELS}
    chosen = [by_name[name] for name in names if name in by_name]
    missing = [spec for spec in chosen if not spec.configured(settings)]
    if missing:
        raise ConfigError("; ".join(f"channel {spec.name} needs {spec.needs}" for spec in missing))
    return chosen


def build(spec: ChannelSpec, settings: Settings, dispatcher: Dispatcher) -> ChannelAdapter:
    """The channel's adapter, given its options: unusable settings are refused first."""
    options = spec.options(settings)
    adapter_class = getattr(importlib.import_module(spec.module), spec.adapter)
    adapter: ChannelAdapter = adapter_class(options, dispatcher)
    return adapter
