"""The argument types of `bot ops`: each turns what an operator typed into a value, or
refuses it (argparse prints the message and exits 2) before any store is reached."""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bot.channels import registry
from bot.errors import BadInput

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s`, `2w` as a positive timedelta."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise BadInput(
            f"{text!r} is not a duration; use a positive number and a unit: "
            "s, m, h, d or w (e.g. 90d, 1h)"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def age(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    """An argument type: a number of `kind` from `low` to `high`."""

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}")
        return number

    return parse


positive = _bounded(int, 1, 100_000)  # a count: --limit
seconds = _bounded(float, 0, 3600)  # a wait: --lock-wait
timeout = _bounded(float, 0.001, 3600)  # a time to give up after: --timeout


def conversation_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a conversation id (a UUID): {value!r}") from None


def search_text(value: str) -> str:
    if not value.strip() or "\x00" in value:
        raise argparse.ArgumentTypeError("give some words to search for")
    return value


def user_ref(value: str) -> tuple[str, str]:
    """CHANNEL:ID, e.g. discord:1234."""
    name, sep, channel_user_id = value.partition(":")
    if not (sep and name and channel_user_id):
        raise argparse.ArgumentTypeError(f"takes CHANNEL:ID (e.g. discord:1234), not {value!r}")
    return channel(name), channel_user_id


def channel(value: str) -> str:
    """A channel the bot has: a name it has no adapter for is a typo (bad input, exit 2),
    never a user, flag or config that is merely missing."""
    if value not in registry.ALL_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown channel {value!r}; choose from {', '.join(registry.ALL_NAMES)}"
        )
    return value


def check_text(args: argparse.Namespace) -> None:
    """Every text argument is valid Unicode without NUL characters.

    Bytes that are not UTF-8 reach Python as lone surrogates ('\\udcff'), which neither
    Postgres nor JSON can hold; refusing them here keeps them from surfacing later as
    a store error.
    """
    for value in vars(args).values():
        for text in _texts(value):
            if "\x00" in text:
                raise BadInput(f"an argument contains a NUL character: {text!r}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise BadInput(f"an argument is not valid UTF-8 text: {text!r}") from None


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    return []
