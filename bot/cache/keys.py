"""Every Redis key name and TTL of the bot (DESIGN.md, "Redis keys").

Nothing else in the code base spells a key. A configurable prefix lets several
deployments share one Redis; with the default empty prefix the keys are exactly
the reference layout.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from bot.domain import DM_SCOPE

RATE_WINDOW_SECONDS = 60  # the key is per minute by name

# Kinds of key, for ops and cache statistics: the part before the first colon.
SESSION = "session"
RATE = "rate"
ACTIVE = "active"
CONTEXT = "context"
CHANNEL_CONFIG = "channel_config"
CHAT_CONFIG = "chat_config"
FEATURES = "features"
DEDUP = "dedup"
LOCK = "lock"
STATS = "stats"
STREAM = "stream"
HEALTH = "health"
ALL_KINDS = frozenset(
    {SESSION, RATE, ACTIVE, CONTEXT, CHANNEL_CONFIG, CHAT_CONFIG, FEATURES, DEDUP, LOCK, STATS}
    | {STREAM, HEALTH}
)
STREAM_RECORD_TTL = 86_400  # a stream left on screen longer than a day is left alone


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds key names; the TTLs ride along so callers never hard-code them. Built from
    the settings by the runtime (bot/runtime.py, `keys_for`)."""

    prefix: str
    session_ttl: int
    context_ttl: int
    context_messages: int
    active_window: int
    channel_config_ttl: int
    dedup_ttl: int
    dedup_processing_ttl: int
    lock_ttl: int
    delivery_lease: int

    def session(self, channel: str, channel_user_id: str, scope: str = DM_SCOPE) -> str:
        """A user's session in a scope (Scope.key): the reference layout for a DM and
        the console, the scope appended for a group chat or thread."""
        base = f"{self.prefix}{SESSION}:{channel}:{channel_user_id}"
        return base if scope == DM_SCOPE else f"{base}:{scope}"

    def shared_session(self, channel: str, scope: str) -> str:
        """The session of a shared conversation: everyone's in a group or thread."""
        return f"{self.prefix}{SESSION}:{channel}:{scope}"

    def rate_template(self) -> str:
        """The rate key with `{user_id}` left open, for scripts that learn the id."""
        return f"{self.prefix}{RATE}:user:{{user_id}}:minute"

    def rate(self, user_id: uuid.UUID) -> str:
        return self.rate_template().format(user_id=user_id)

    def active(self, channel: str) -> str:
        return f"{self.prefix}{ACTIVE}:{channel}"

    def context_template(self) -> str:
        return f"{self.prefix}{CONTEXT}:conv:{{conversation_id}}"

    def context(self, conversation_id: uuid.UUID) -> str:
        return self.context_template().format(conversation_id=conversation_id)

    def features_global(self) -> str:
        return f"{self.prefix}{FEATURES}:global"

    def features_channel(self, channel: str) -> str:
        return f"{self.prefix}{FEATURES}:channel:{channel}"

    def features_invalidation_channel(self) -> str:
        """The pub/sub channel on which ops announce a flag change to every worker."""
        return f"{self.prefix}{FEATURES}:invalidate"

    def kind_of(self, key: str) -> str:
        """The kind of a key of this deployment (session, rate, …): for ops counts."""
        return key.removeprefix(self.prefix).partition(":")[0]

    def channel_config(self, channel: str) -> str:
        return f"{self.prefix}{CHANNEL_CONFIG}:{channel}"

    def chat_config(self, channel: str, chat_id: str, thread_id: str | None = None) -> str:
        """A chat's (or a thread's) `chat_configs` row as JSON, or 'none' for no row."""
        base = f"{self.prefix}{CHAT_CONFIG}:{channel}:chat:{chat_id}"
        return f"{base}:thread:{thread_id}" if thread_id else base

    def chat_config_invalidation_channel(self) -> str:
        """The pub/sub channel on which ops announce a chat's changed settings."""
        return f"{self.prefix}{CHAT_CONFIG}:invalidate"

    def dedup(self, channel: str, platform_message_id: str) -> str:
        """A platform event's claim: its EventState (bot/cache/events.py)."""
        return f"{self.prefix}{DEDUP}:{channel}:{platform_message_id}"

    def lock(self, channel: str, channel_user_id: str) -> str:
        """Serializes one user's messages (and so their conversation) across workers;
        the holder renews it while it works, so it outlives a slow reply but not a crash."""
        return f"{self.prefix}{LOCK}:chat:{channel}:{channel_user_id}"

    def scope_lock(self, channel: str, scope: str) -> str:
        """Serializes the messages of a shared conversation, whoever writes them."""
        return f"{self.prefix}{LOCK}:scope:{channel}:{scope}"

    def streams(self, channel: str) -> str:
        """A sorted set of the channel's replies streaming on screen: stream id, scored
        by the time its worker must renew it by (bot/cache/streams.py)."""
        return f"{self.prefix}{STREAM}:{channel}:live"

    def stream(self, channel: str, stream_id: str) -> str:
        """Where one streaming reply is on screen and what it shows (JSON), so that
        another worker can end it with the interrupted note if its own dies."""
        return f"{self.prefix}{STREAM}:{channel}:{stream_id}"

    def health_probe(self) -> str:
        """The key `bot ops health` writes (expiring in a second) to see Redis take writes."""
        return f"{self.prefix}{HEALTH}:probe"

    def stats(self) -> str:
        """A hash of counters (session_hit, rate_limited, duplicate …) summed over workers."""
        return f"{self.prefix}{STATS}:counters"

    def all_pattern(self) -> str:
        """A SCAN pattern of every key of this deployment; the prefix matched literally."""
        return f"{glob_escape(self.prefix)}*"


def glob_escape(value: str) -> str:
    """`value` matched literally by a Redis SCAN/KEYS pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", value)
