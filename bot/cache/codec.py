"""How hot state is written in Redis: JSON for context items, channel configs and
session updates, and the session hash read back. One home for the formats, shared by
the service's cache and by ops."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from enum import Enum

from bot.domain import ChannelSettings, ContextMessage, RecentContext, SessionState

FENCE_FIELD = "last_message_id"  # of the session hash: the cached context's fence
PINNED_FIELD = "pinned"  # of the session hash: '1' if `model` is the conversation's override
# Of the session hash: the cached context's summary (JSON; '' for none), written with
# the fence; kept beside the list so that trimming the list never drops it.
SUMMARY_FIELD = "summary"


class Fence(Enum):
    KEEP = "keep"  # the session hash's fence is left as it is (the context list too)


log = logging.getLogger(__name__)


def encode_context(message: ContextMessage) -> str:
    return json.dumps(message.fields(), ensure_ascii=False, separators=(",", ":"))


def decode_context(raw: bytes | str) -> ContextMessage:
    return ContextMessage.from_fields(json.loads(raw))


def decode_contexts(raw: bytes | str) -> list[ContextMessage] | None:
    """The context as BEGIN returns it (one JSON array); None if any of it is unreadable,
    so that it is rebuilt from Postgres like a miss."""
    try:
        return [ContextMessage.from_fields(item) for item in json.loads(raw)]
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable cached context: rebuilding it from Postgres")
        return None


def encode_channel(channel: ChannelSettings) -> str:
    return json.dumps({"default_model": channel.default_model, "settings": channel.settings})


def decode_channel(raw: bytes | str) -> ChannelSettings:
    data = json.loads(raw)
    return ChannelSettings(default_model=data.get("default_model"), settings=data["settings"])


def text_of(value: bytes | str) -> str:
    """A Redis reply as text; bytes that are not UTF-8 (a key written by hand) as U+FFFD,
    so that they read as unreadable rather than crash the reader."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def session_fields(flat: Sequence[bytes | str]) -> dict[str, str]:
    """The session hash as HGETALL returns it (field, value, field, value …)."""
    return {text_of(flat[i]): text_of(flat[i + 1]) for i in range(0, len(flat), 2)}


def decode_session(flat: Sequence[bytes | str]) -> SessionState | None:
    fields = session_fields(flat)
    try:
        return SessionState(
            user_id=uuid.UUID(fields["user_id"]),
            conversation_id=uuid.UUID(fields["conversation_id"]),
            model=fields.get("model") or None,
            # Missing in a hash written by a version without it: a miss, so that the
            # session is read again from Postgres (an experiment's variant beats a
            # preference, not an override: the two must be told apart).
            pinned={"1": True, "0": False}[fields[PINNED_FIELD]],
        )
    except (KeyError, ValueError):
        return None  # absent or unreadable: rebuild from Postgres


def decode_cached_context(flat: Sequence[bytes | str], raw: bytes | str) -> RecentContext | None:
    """The cached context (BEGIN's one JSON array) with its fence and its summary (put
    last: the oldest) from the session hash; None, to read both from Postgres, if any
    is unreadable or the fence is missing (a context cached by a version without it)."""
    messages = decode_contexts(raw)
    fields = session_fields(flat)
    fence = fields.get(FENCE_FIELD)
    if messages is None or fence is None:
        return None
    try:
        summary = fields.get(SUMMARY_FIELD)
        if summary:
            messages.append(decode_context(summary))
        return RecentContext(messages, uuid.UUID(fence) if fence else None)
    except (ValueError, KeyError, TypeError):
        return None


def encode_session(
    session: SessionState,
    last_activity: float | None = None,
    *,
    shared: bool = False,
    fence: uuid.UUID | Fence | None = Fence.KEEP,
    summary: ContextMessage | Fence | None = Fence.KEEP,
) -> str:
    """The session hash's fields as JSON (the scripts write them with HSET); the last
    activity is now unless given. A shared session names no user: whoever writes is
    found in their own session (`encode_author`). `fence`, written whenever the context
    list is: the newest message stored when the list was (RecentContext.last_id);
    `summary`, whenever the list is replaced: the context's summary (None: none)."""
    when = time.time() if last_activity is None else last_activity
    fields = {
        "conversation_id": str(session.conversation_id),
        "model": session.model or "",
        PINNED_FIELD: "1" if session.pinned else "0",
        "last_activity": f"{when:.3f}",
    }
    if fence is not Fence.KEEP:
        fields[FENCE_FIELD] = str(fence or "")
    if summary is not Fence.KEEP:
        fields[SUMMARY_FIELD] = encode_context(summary) if summary else ""
    return json.dumps(fields if shared else {"user_id": str(session.user_id), **fields})


def encode_author(session: SessionState) -> str:
    """Who writes in a shared conversation, for their own session hash (their id alone:
    their DM conversation, if any, is left as it is)."""
    return json.dumps({"user_id": str(session.user_id)})
