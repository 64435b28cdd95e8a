"""Which channels `bot run` starts: `--channels` parsing, the credential check, and the
options each adapter is given (checked before any platform SDK is imported)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from bot.channels import names as channel_names
from bot.channels import registry
from bot.config import Settings
from bot.errors import ConfigError
from tests.support import ROOT

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
    assert channel_names.parse_names(written) == names


@pytest.mark.parametrize("written", ["", " , "])
def test_no_name_at_all_is_refused(written: str) -> None:
    with pytest.raises(ConfigError, match="name at least one channel"):
        channel_names.parse_names(written)


def test_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError) as refused:
        channel_names.parse_names("slack, irc,matrix")
    assert str(refused.value) == (
        "unknown channel(s) irc, matrix; choose from console, discord, telegram, slack"
    )


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_a_subset_of_the_configured_channels() -> None:
    settings = make(**ALL_CONFIGURED)
    chosen = registry.select(settings, channel_names.parse_names(" slack, telegram "))
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
        registry.select(settings, channel_names.parse_names("discord,telegram,slack"))
    assert str(refused.value) == (
        "channel telegram needs TELEGRAM_BOT_TOKEN; channel slack needs SLACK_BOT_TOKEN, "
        "with SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP)"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "the Discord channel needs DISCORD_BOT_TOKEN"),
        (
            {"discord_bot_token": "t", "discord_shard_ids": "0"},
            "DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT",
        ),
        (
            {"discord_bot_token": "t", "discord_shard_count": 2, "discord_shard_ids": "1,2"},
            "every DISCORD_SHARD_IDS entry must be below DISCORD_SHARD_COUNT",
        ),
    ],
)
def test_discord_options_refuse_what_cannot_work(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        registry.discord_options(make(**values))
    assert str(refused.value) == message


def test_discord_options_carry_the_shards_and_proxies() -> None:
    options = registry.discord_options(
        make(
            discord_bot_token="discord-token",
            discord_shard_count=4,
            discord_shard_ids="1, 3",
            discord_api_base_url="http://proxy/api",
            discord_gateway_url="ws://proxy/gateway",
            shutdown_grace_seconds=7,
        )
    )
    assert options.token.get_secret_value() == "discord-token"
    assert (options.shard_count, options.shard_ids) == (4, (1, 3))
    assert (options.api_base_url, options.gateway_url) == ("http://proxy/api", "ws://proxy/gateway")
    assert options.shutdown_grace_seconds == 7
    assert registry.discord_options(make(discord_bot_token="t")).shard_ids == ()


def test_telegram_options_need_a_valid_secret_only_for_a_webhook() -> None:
    with pytest.raises(ConfigError) as refused:
        registry.telegram_options(make())
    assert str(refused.value) == "TELEGRAM_BOT_TOKEN is not set"
    polling = registry.telegram_options(make(telegram_bot_token="1:t", telegram_webhook_secret="-"))
    assert polling.webhook_url is None and polling.webhook_secret is None
    hook = {"telegram_bot_token": "1:t", "telegram_webhook_url": "https://bot.example/hook"}
    for secret in (None, "has spaces", "x" * 257):
        with pytest.raises(ConfigError) as refused:
            registry.telegram_options(make(**hook, telegram_webhook_secret=secret))
        assert str(refused.value) == (
            "TELEGRAM_WEBHOOK_URL needs TELEGRAM_WEBHOOK_SECRET: 1-256 of A-Z a-z 0-9 _ -"
        )
    webhook = registry.telegram_options(
        make(**hook, telegram_webhook_secret="s3cret_-", webhook_max_body_bytes=1000)
    )
    assert webhook.webhook_secret is not None
    assert webhook.webhook_secret.get_secret_value() == "s3cret_-"
    assert (webhook.webhook_listen, webhook.webhook_port) == ("0.0.0.0", 8443)
    assert webhook.webhook_max_body_bytes == 1000


def test_slack_options_need_a_bot_token_and_a_way_in() -> None:
    with pytest.raises(ConfigError) as refused:
        registry.slack_options(make(slack_app_token="xapp"))
    assert str(refused.value) == "SLACK_BOT_TOKEN is not set"
    with pytest.raises(ConfigError) as refused:
        registry.slack_options(make(slack_bot_token="xoxb"))
    assert str(refused.value) == (
        "Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET"
    )
    options = registry.slack_options(
        make(slack_bot_token="xoxb", slack_signing_secret="signing", slack_port=0)
    )
    assert options.app_token is None and options.signing_secret is not None
    assert (options.listen, options.port, options.api_base_url) == ("0.0.0.0", 0, None)


def test_options_never_show_a_token() -> None:
    settings = make(**ALL_CONFIGURED, slack_signing_secret="signing-secret")
    for spec in registry.PLATFORM_CHANNELS:
        shown = repr(spec.options(settings))
        for secret in (*ALL_CONFIGURED.values(), "signing-secret"):
            assert secret not in shown


def test_building_options_imports_no_platform_sdk() -> None:
    """The SDKs load only with the adapter that is built (discord.py alone takes a second)."""
    check = (
        "import sys\n"
        "from bot.channels import registry\n"
        "from bot.config import Settings\n"
        "settings = Settings(_env_file=None, discord_bot_token='d', telegram_bot_token='1:t',"
        " slack_bot_token='b', slack_app_token='a')\n"
        "for spec in registry.PLATFORM_CHANNELS:\n"
        "    spec.options(settings)\n"
        "sdks = ('discord', 'telegram', 'slack_bolt', 'slack_sdk')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in sdks))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_names_the_command_line_accepts_are_the_channels_the_registry_builds() -> None:
    assert tuple(spec.name for spec in registry.PLATFORM_CHANNELS) == channel_names.PLATFORMS
