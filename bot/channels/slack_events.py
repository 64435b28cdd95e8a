"""Slack's translation: an Events API event in, an IncomingMessage (or nothing) out.

Pure functions, no I/O. Bolt hands events over as decoded JSON without checking the
fields' types: a field that is not what Slack documents counts as absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bot.domain import ChatKind, IncomingMessage

_USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})  # written by a person


def incoming_message(
    body: Mapping[str, Any], event: Mapping[str, Any], bot_user_id: str | None
) -> IncomingMessage | None:
    """The message a person wrote to the bot, or None for what the bot must ignore.

    Fields of another type than Slack documents are treated as absent: never an error.
    """
    if not _addressed(event, bot_user_id):
        return None
    text = _string(event, "text") or ""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text)
    text = unescape(text).strip()
    if not text:
        return None
    user, channel = str(event["user"]), str(event["channel"])
    ts = _string(event, "ts")
    return IncomingMessage(
        channel="slack",
        channel_user_id=user,  # workspace-scoped: one bot token serves one workspace
        text=text,
        # Events rarely carry the profile; without it the adapter asks users.info.
        username=profile_name(event.get("user_profile")),
        platform_message_id=_string(body, "event_id") or (ts and f"{channel}:{ts}"),
        chat_id=channel,
        thread_id=_string(event, "thread_ts") or ts,
        # A DM is the user's DM. A mention in a channel is answered in a thread (its
        # own, or the one it was written in): the thread is the conversation's place.
        chat_kind=ChatKind.PRIVATE if event.get("channel_type") == "im" else ChatKind.THREAD,
    )


def _string(fields: Mapping[str, Any], name: str) -> str | None:
    """A text field of an event, None when it is absent, empty or not text."""
    value = fields.get(name)
    return value if isinstance(value, str) and value else None


def profile_name(profile: object, handle: object = None) -> str | None:
    """What Slack shows for a person: display name, else full name, else the handle."""
    fields = profile if isinstance(profile, dict) else {}
    for name in (fields.get("display_name"), fields.get("real_name"), fields.get("name"), handle):
        if isinstance(name, str) and name.strip():
            return name.strip()
    return None


def _addressed(event: Mapping[str, Any], bot_user_id: str | None) -> bool:
    """A person's (not a bot's, not our own) new message in a DM, or a mention of the bot."""
    user, kind, subtype = _string(event, "user"), event.get("type"), event.get("subtype")
    return (
        not event.get("bot_id")
        and (subtype is None or (isinstance(subtype, str) and subtype in _USER_SUBTYPES))
        and user not in (None, bot_user_id)
        and _string(event, "channel") is not None
        and (kind == "app_mention" or (kind == "message" and event.get("channel_type") == "im"))
    )


def escape(text: str) -> str:
    """Slack's three control characters, so a reply can't ping @channel or fake a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
