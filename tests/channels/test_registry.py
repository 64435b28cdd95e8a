"""Which channels `bot run` starts: `--channels` parsing and the credential check."""

from __future__ import annotations

from typing import Any

import pytest

from bot.channels import registry
from bot.config import Settings
from bot.errors import ConfigError

ALL_CONFIGURED = {
    "discord_bot_token": "discord-token",
    "telegram_bot_token": "123:telegram-token",
    "slack_bot_token": "xoxb-slack",
    "slack_app_token": "xapp-slack",
}


@pytest.mark.parametrize(
    ("written", "names"),
    [
        ("console", ("console",)),
        (" telegram , slack ", ("telegram", "slack")),
        ("slack,,console,", ("slack", "console")),
        ("discord, discord", ("discord",)),  # one adapter per channel, however often named
    ],
)
def test_names_are_split_at_commas_without_spaces(written: str, names: tuple[str, ...]) -> None:
    assert registry.parse_names(written) == names


@pytest.mark.parametrize("written", ["", " , "])
def test_no_name_at_all_is_refused(written: str) -> None:
    with pytest.raises(ConfigError, match="name at least one channel"):
        registry.parse_names(written)


def test_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError) as refused:
        registry.parse_names("slack, irc,matrix")
    assert str(refused.value) == (
        "unknown channel(s) irc, matrix; choose from console, discord, telegram, slack"
    )


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_a_subset_of_the_configured_channels() -> None:
    settings = make(**ALL_CONFIGURED)
    chosen = registry.select(settings, registry.parse_names(" slack, telegram "))
    assert [spec.name for spec in chosen] == ["slack", "telegram"]
    assert [spec.name for spec in registry.select(settings, None)] == [
        "discord",
        "telegram",
        "slack",
    ]
    assert registry.select(settings, ("console",)) == []  # the caller builds the console


def test_a_named_channel_without_its_credentials_names_the_setting() -> None:
    settings = make(discord_bot_token="discord-token", slack_bot_token="xoxb-slack")
    with pytest.raises(ConfigError) as refused:
        registry.select(settings, registry.parse_names("discord,telegram,slack"))
    assert str(refused.value) == (
        "channel telegram needs TELEGRAM_BOT_TOKEN; channel slack needs SLACK_BOT_TOKEN, "
        "with SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP)"
    )
