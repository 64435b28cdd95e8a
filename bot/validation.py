"""Input checks: clean what can be cleaned, refuse the rest with a clear reason."""

from __future__ import annotations

import re

from bot.errors import BotError

# C0 controls other than tab, newline and carriage return, DEL, and lone surrogates
# (which cannot be encoded as UTF-8, and so cannot be stored).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class InvalidInput(BotError):
    """The message cannot be handled; the text says why, for the user."""


def clean_text(text: str, max_chars: int) -> str:
    """The text as it will be stored, or InvalidInput naming the problem."""
    cleaned = _SURROGATE.sub("\ufffd", _CONTROL.sub("", text)).strip()
    if not cleaned:
        raise InvalidInput("I received an empty message. Send some text, or /help.")
    if len(cleaned) > max_chars:
        raise InvalidInput(
            f"Your message is {len(cleaned):,} characters long; the limit is {max_chars:,}. "
            "Please shorten it or split it into several messages."
        )
    return cleaned
