"""Input checks: clean what can be cleaned, refuse the rest with a clear reason."""

from __future__ import annotations

import hashlib
import re

from bot.domain import ChatKind
from bot.errors import InvalidInput

# C0 controls other than tab, newline and carriage return, DEL, and lone surrogates
# (which cannot be encoded as UTF-8, and so cannot be stored).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# What Postgres cannot hold in a text column: NUL, and what UTF-8 cannot encode.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")

# The widths of users.channel_user_id and users.username (VARCHAR(255)).
MAX_USER_ID_CHARS = 255
MAX_USERNAME_CHARS = 255
MAX_EVENT_ID_CHARS = 255  # messages.platform_message_id
# A chat's and a thread's id make the scope key (conversations.scope, VARCHAR(300)).
MAX_CHAT_ID_CHARS = 128


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


def check_user_id(channel_user_id: str) -> str:
    """The platform's id of the sender, or InvalidInput if it cannot be stored.

    An id is a key: cutting it would merge different users, so it is refused instead.
    """
    if len(channel_user_id) > MAX_USER_ID_CHARS:
        raise InvalidInput(
            f"I can't answer messages from this account: its user id is "
            f"{len(channel_user_id):,} characters long, and the limit is {MAX_USER_ID_CHARS}."
        )
    if (
        not channel_user_id.strip()
        or _CONTROL.search(channel_user_id)
        or _SURROGATE.search(channel_user_id)
    ):
        raise InvalidInput(
            "I can't answer messages from this account: its user id is empty or not valid text."
        )
    return channel_user_id


def check_chat_id(chat_id: str | None, kind: ChatKind) -> str | None:
    """The chat's id, required (and a valid key) where it names the scope: a group or
    thread. A private chat's is only where to reply."""
    if kind is ChatKind.PRIVATE:
        return chat_id
    return _scope_part(chat_id, "chat")


def check_thread_id(thread_id: str | None, kind: ChatKind) -> str | None:
    """The thread's id, required (and a valid key) for a message in a thread."""
    if kind is not ChatKind.THREAD:
        return thread_id
    return _scope_part(thread_id, "thread")


def _scope_part(value: str | None, what: str) -> str:
    """Part of a scope key: cutting it would merge two chats, so it is refused instead."""
    if (
        not value
        or len(value) > MAX_CHAT_ID_CHARS
        or _CONTROL.search(value)
        or _SURROGATE.search(value)
    ):
        raise InvalidInput(f"I can't answer here: this {what}'s id is missing or not valid.")
    return value


def clean_username(username: str | None) -> str | None:
    """The display name as stored: cosmetic, so cleaned and cut rather than refused."""
    if username is None:
        return None
    cleaned = _SURROGATE.sub("\ufffd", _CONTROL.sub("", username)).strip()
    return cleaned[:MAX_USERNAME_CHARS] or None


def storable_event_id(event_id: str | None) -> str | None:
    """The platform's event id as stored, for de-duplication.

    An id that does not fit the column or cannot be stored is replaced by its digest
    rather than refused: the message is fine, and a redelivery gets the same digest.
    An empty id identifies nothing, so it is none.
    """
    if not event_id:
        return None
    if len(event_id) <= MAX_EVENT_ID_CHARS and not _UNSTORABLE.search(event_id):
        return event_id
    digest = hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest}"
