"""What each channel adapter is told: the few settings it uses, and nothing else.

The registry builds these from the Settings (bot/channels/registry.py) and checks their
combinations there, so an adapter never sees the other seventy settings and a test can
hand one exactly what it needs. This module imports no platform SDK: options are built,
and bad ones refused, before discord.py, python-telegram-bot or slack-bolt is loaded.
Tokens stay SecretStr, so that printing the options never shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr


@dataclass(frozen=True, slots=True)
class DiscordOptions:
    token: SecretStr
    api_base_url: str | None  # replaces discord.py's Route.BASE while the adapter runs
    gateway_url: str | None  # where every main gateway websocket goes
    shard_count: int | None  # None: asked from the API
    shard_ids: tuple[int, ...]  # empty: every shard of the count
    shutdown_grace_seconds: float
    stream_interval_seconds: float = 1.2  # at most one update of a growing reply


@dataclass(frozen=True, slots=True)
class TelegramOptions:
    token: SecretStr
    api_base_url: str
    webhook_url: str | None  # set: webhook mode; None: long polling
    webhook_secret: SecretStr | None  # set (and valid) whenever webhook_url is
    webhook_listen: str
    webhook_port: int
    webhook_max_body_bytes: int
    shutdown_grace_seconds: float
    stream_interval_seconds: float = 1.0  # at most one update of a growing reply per chat


@dataclass(frozen=True, slots=True)
class SlackOptions:
    bot_token: SecretStr
    app_token: SecretStr | None  # set: Socket Mode
    signing_secret: SecretStr | None  # set: the HTTP Events API can verify requests
    api_base_url: str | None  # None: the SDK's https://slack.com/api/
    listen: str
    port: int
    webhook_max_body_bytes: int
    shutdown_grace_seconds: float
    stream_interval_seconds: float = 1.5  # at most one update of a growing reply
    feedback_buttons: bool = True  # replies end with 👍/👎 buttons (ratings)


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    """The console reads no setting: who is chatting, and whether a person is typing."""

    user: str
    interactive: bool  # a terminal: greet, prompt, skip blank lines
    log_file: str | None = None  # where the log goes meanwhile, said in the greeting


ChannelOptions = DiscordOptions | TelegramOptions | SlackOptions
