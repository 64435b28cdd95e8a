"""Every Redis key name and TTL of the bot (DESIGN.md, "Redis keys").

Nothing else in the code base spells a key. A configurable prefix lets several
deployments share one Redis; with the default empty prefix the keys are exactly
the reference layout.

On a Redis Cluster (REDIS_CLUSTER) the keys of one message's turn carry a hash tag, so
that they share a slot and its scripts run on one node: the place the message is
written in, in braces. For a DM that is `{channel:user}`, for a group or thread its
scope (`{chat:-100123}`): `session:{telegram:42}`, `lock:scope:slack:{chat:C1}`. The
names read as the reference ones with braces added. Two differ in kind, because a
script must name every key before it runs, before it has read the session. A
context is kept per session, not per conversation (`context:{telegram:42}`), and
checked against the turn's fence like any other (bot/store/conversations.py). A rate
counter is kept per platform user (`rate:user:{telegram:42}:minute`). Keys for a
whole platform (active users, channel config, stats) are read and written by
commands pipelined beside the script, each routed to its own node.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.domain import DM_SCOPE, IncomingMessage
from bot.quotas import Counter, Holder

RATE_WINDOW_SECONDS = 60  # the key is per minute by name

# Kinds of key, for ops and cache statistics: the part before the first colon.
SESSION = "session"
RATE = "rate"
ACTIVE = "active"
CONTEXT = "context"
CHANNEL_CONFIG = "channel_config"
CHAT_CONFIG = "chat_config"
FEATURES = "features"
BLOCKED = "blocked"
DEDUP = "dedup"
LOCK = "lock"
STATS = "stats"
STREAM = "stream"
HEALTH = "health"
QUOTA = "quota"
AB_TEST = "ab_test"
EXPERIMENTS = "experiments"
ALL_KINDS = frozenset(
    {SESSION, RATE, ACTIVE, CONTEXT, CHANNEL_CONFIG, CHAT_CONFIG, FEATURES, DEDUP, LOCK, STATS}
    | {STREAM, HEALTH, QUOTA, BLOCKED, AB_TEST}
)
QUOTA_GRACE_SECONDS = 86_400  # a counter outlives its period by this (clocks differ)
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
    cluster: bool = False  # hash tags: the keys of one message's turn share a slot

    def _placed(self, kind: str, channel: str, user: str, scope: str) -> str:
        """`kind:channel:user` in a DM, `kind:channel:user:scope` elsewhere, the place
        in braces on a cluster."""
        if scope == DM_SCOPE:
            return self._key(kind, self._tag(f"{channel}:{user}"))
        return self._key(kind, f"{channel}:{user}:{self._tag(scope)}")

    def _key(self, kind: str, rest: str) -> str:
        return f"{self.prefix}{kind}:{rest}"

    def _tag(self, place: str) -> str:
        return f"{{{place}}}" if self.cluster else place

    def session(self, channel: str, channel_user_id: str, scope: str = DM_SCOPE) -> str:
        """A user's session in a scope (Scope.key): the reference layout for a DM and
        the console, the scope appended for a group chat or thread."""
        return self._placed(SESSION, channel, channel_user_id, scope)

    def shared_session(self, channel: str, scope: str) -> str:
        """The session of a shared conversation: everyone's in a group or thread."""
        return self._key(SESSION, f"{channel}:{self._tag(scope)}")

    def conversation_session(self, channel: str, scope: str, channel_user_id: str | None) -> str:
        """The session of a conversation: its user's in its scope, or (no user) the
        shared one of its scope."""
        if channel_user_id is None:
            return self.shared_session(channel, scope)
        return self.session(channel, channel_user_id, scope)

    def author(self, channel: str, channel_user_id: str, scope: str) -> str:
        """Where the writer of a shared conversation is known (their user id): their own
        session, in their DMs; on a cluster, their session in the place (the slot of
        the shared conversation's turn)."""
        if self.cluster:
            return self.session(channel, channel_user_id, scope)
        return self.session(channel, channel_user_id)

    def rate_template(self) -> str:
        """The rate key with `{user_id}` left open, for scripts that learn the id; ''
        on a cluster, whose counters are per platform user (`rate_of`)."""
        return "" if self.cluster else f"{self.prefix}{RATE}:user:{{user_id}}:minute"

    def rate(self, user_id: uuid.UUID) -> str:
        return self.rate_template().format(user_id=user_id)

    def rate_of(self, channel: str, channel_user_id: str) -> str:
        """A platform user's rate counter on a cluster, in the slot of their DMs."""
        return self._key(RATE, f"user:{self._tag(f'{channel}:{channel_user_id}')}:minute")

    def user_rate(self, channel: str, channel_user_id: str, user_id: uuid.UUID) -> str:
        """A user's rate counter: by their id, or on a cluster by their platform id."""
        return self.rate_of(channel, channel_user_id) if self.cluster else self.rate(user_id)

    def quota(self, counter: Counter, message: IncomingMessage, now: datetime) -> str:
        """A quota's counter this period (bot/quotas.py): the writer's, by platform id
        (`quota:user:telegram:42:day:2026-12-06`), or their group chat's, threads
        included (`quota:chat:telegram:-100123:month:2026-12`). On a cluster, in the
        slot of the writer's DMs, or of the chat."""
        period = f"{counter.period}:{counter.period.stamp(now)}"
        if counter.holder is Holder.USER:
            place = self._tag(f"{message.channel}:{message.channel_user_id}")
        else:
            place = f"{message.channel}:{self._tag(f'chat:{message.chat_id}')}"
        return self._key(QUOTA, f"{counter.holder}:{place}:{period}")

    def active(self, channel: str) -> str:
        return f"{self.prefix}{ACTIVE}:{channel}"

    def context_template(self) -> str:
        return f"{self.prefix}{CONTEXT}:conv:{{conversation_id}}"

    def context(self, conversation_id: uuid.UUID) -> str:
        return self.context_template().format(conversation_id=conversation_id)

    def context_for(self, session_key: str) -> str:
        """The context key a script reading `session_key` names: the template of the
        conversation's key (filled with the id the session names), or on a cluster the
        session's own context, in its slot."""
        if not self.cluster:
            return self.context_template()
        return self._key(CONTEXT, session_key.removeprefix(f"{self.prefix}{SESSION}:"))

    def context_of(self, session_key: str, conversation_id: uuid.UUID) -> str:
        """The key of the context cached with a session of `conversation_id`."""
        if self.cluster:
            return self.context_for(session_key)
        return self.context(conversation_id)

    def contexts(self, sessions: Sequence[str], conversations: Iterable[uuid.UUID]) -> list[str]:
        """The context keys of these sessions and conversations: one per conversation,
        or on a cluster one per session."""
        if self.cluster:
            return [self.context_for(session) for session in sessions]
        return [self.context(conversation) for conversation in conversations]

    def features_global(self) -> str:
        return self._key(FEATURES, f"{self._tag('flags')}:global" if self.cluster else "global")

    def features_channel(self, channel: str) -> str:
        flags = f"{self._tag('flags')}:" if self.cluster else ""
        return self._key(FEATURES, f"{flags}channel:{channel}")

    def features_invalidation_channel(self) -> str:
        """The pub/sub channel on which ops announce a flag change to every worker."""
        return f"{self.prefix}{FEATURES}:invalidate"

    def blocklist(self) -> str:
        """The blocked users (bot/cache/blocklist.py): one hash, in one slot anywhere."""
        return f"{self.prefix}{BLOCKED}:users"

    def blocklist_invalidation_channel(self) -> str:
        """The pub/sub channel on which ops announce a change of the blocklist."""
        return f"{self.prefix}{BLOCKED}:invalidate"

    def ab_test(self, experiment: str) -> str:
        """An experiment's assignments, as the reference design keeps them: a hash of
        `user:{user_id}` -> variant, written with each exchange in it (beside FINISH on
        a cluster: its own slot). No TTL: it is the experiment's record, as long as the
        experiment is kept (Postgres holds the same in experiment_assignments)."""
        return self._key(AB_TEST, experiment)

    @staticmethod
    def ab_test_field(user_id: uuid.UUID) -> str:
        return f"user:{user_id}"

    def experiments_invalidation_channel(self) -> str:
        """The pub/sub channel on which ops announce that an experiment was created or
        stopped: every worker reloads the running ones."""
        return f"{self.prefix}{EXPERIMENTS}:invalidate"

    def kind_of(self, key: str) -> str:
        """The kind of a key of this deployment (session, rate, …): for ops counts."""
        return key.removeprefix(self.prefix).partition(":")[0]

    def channel_config(self, channel: str) -> str:
        return f"{self.prefix}{CHANNEL_CONFIG}:{channel}"

    def chat_config(self, channel: str, chat_id: str, thread_id: str | None = None) -> str:
        """A chat's (or a thread's) `chat_configs` row as JSON, or 'none' for no row."""
        # On a cluster the chat's and its threads' share a slot: one MGET reads both.
        base = self._key(CHAT_CONFIG, f"{channel}:chat:{self._tag(chat_id)}")
        return f"{base}:thread:{thread_id}" if thread_id else base

    def chat_config_invalidation_channel(self) -> str:
        """The pub/sub channel on which ops announce a chat's changed settings."""
        return f"{self.prefix}{CHAT_CONFIG}:invalidate"

    def dedup(
        self, channel: str, platform_message_id: str, user: str = "", scope: str = DM_SCOPE
    ) -> str:
        """A platform event's claim: its EventState (bot/cache/events.py); on a cluster
        in the slot of the place it was written in (its writer and scope)."""
        base = self._key(DEDUP, f"{channel}:{platform_message_id}")
        if not self.cluster:
            return base
        place = f"{channel}:{user}" if scope == DM_SCOPE else scope
        return f"{base}:{self._tag(place)}"

    def dedup_anywhere(self, channel: str, platform_message_id: str) -> str:
        """A SCAN pattern of the event's claim wherever it was written (on a cluster,
        where its name holds its place)."""
        return f"{glob_escape(self._key(DEDUP, f'{channel}:{platform_message_id}'))}:*"

    def lock(self, channel: str, channel_user_id: str, scope: str = DM_SCOPE) -> str:
        """Serializes one user's messages (and so their conversation) across workers;
        the holder renews it while it works, so it outlives a slow reply but not a crash.
        One per user, wherever they write; on a cluster one per user and place."""
        if not self.cluster:
            return self._key(LOCK, f"chat:{channel}:{channel_user_id}")
        return self._placed(f"{LOCK}:chat", channel, channel_user_id, scope)

    def scope_lock(self, channel: str, scope: str) -> str:
        """Serializes the messages of a shared conversation, whoever writes them."""
        return self._key(LOCK, f"scope:{channel}:{self._tag(scope)}")

    def summary_lock(self, conversation_id: uuid.UUID) -> str:
        """Held by the one worker summarising a conversation (bot/summaries.py), while it
        does; it lapses after the summary call's deadline should that worker die."""
        return self._key(LOCK, f"summary:{conversation_id}")

    def run_lock(self, name: str) -> str:
        """Held by the one worker running a scheduled job (`name`) this interval."""
        return self._key(LOCK, f"run:{name}")

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
