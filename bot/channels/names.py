"""The channels the bot has, by name: what `--channels` and the ops commands accept.

Apart from bot/channels/registry.py, which knows how to build each: the command line
checks names before it imports anything a channel needs (`bot --help` stays fast).
"""

from __future__ import annotations

from bot.errors import ConfigError

PLATFORMS = ("discord", "telegram", "slack")  # registry.PLATFORM_CHANNELS, in this order
ALL_NAMES = ("console", *PLATFORMS)


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
