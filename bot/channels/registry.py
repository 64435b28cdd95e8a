"""Which channels exist, which settings turn each on, and how to build one."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from bot.channels.base import ChannelAdapter
from bot.channels.dispatch import Dispatcher
from bot.config import Settings
from bot.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    module: str
    adapter: str
    needs: str  # the settings that enable it, for operators

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


PLATFORM_CHANNELS = (
    ChannelSpec("discord", "bot.channels.discord", "DiscordAdapter", "DISCORD_BOT_TOKEN"),
    ChannelSpec("telegram", "bot.channels.telegram", "TelegramAdapter", "TELEGRAM_BOT_TOKEN"),
    ChannelSpec(
        "slack",
        "bot.channels.slack",
        "SlackAdapter",
        "SLACK_BOT_TOKEN, with SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP)",
    ),
)
ALL_NAMES = ("console", *(spec.name for spec in PLATFORM_CHANNELS))


def parse_names(text: str) -> tuple[str, ...]:
    """Channel names as written for `--channels`: comma-separated, spaces and repeats
    ignored, each one a channel the bot has."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ConfigError(f"name at least one channel, from {', '.join(ALL_NAMES)}")
    unknown = [name for name in names if name not in ALL_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown channel(s) {', '.join(unknown)}; choose from {', '.join(ALL_NAMES)}"
        )
    return names


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
    adapter_class = getattr(importlib.import_module(spec.module), spec.adapter)
    adapter: ChannelAdapter = adapter_class(settings, dispatcher)
    return adapter
