"""Plain data passed between the layers: no SDK objects, no ORM rows."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any


class ChatKind(StrEnum):
    """The kind of place a message is written in."""

    PRIVATE = "private"  # a direct message to the bot; the console
    GROUP = "group"  # a group chat or channel
    THREAD = "thread"  # a thread inside one: Slack thread, Discord thread, Telegram topic


DM_SCOPE = "dm"
_CHAT, _THREAD = "chat:", ":thread:"


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a conversation happens; nothing said in one scope is seen in another.

    Its key, stored with each conversation and in the session's Redis key: 'dm' for a
    private chat with the bot (one per user and platform), 'chat:{chat id}' for a group
    chat or channel, 'chat:{chat id}:thread:{thread id}' for a thread in one.
    """

    kind: ChatKind
    chat_id: str | None = None  # None for a private chat
    thread_id: str | None = None  # only for a thread

    @property
    def key(self) -> str:
        if self.kind is ChatKind.PRIVATE:
            return DM_SCOPE
        if self.kind is ChatKind.THREAD:
            return f"{_CHAT}{self.chat_id}{_THREAD}{self.thread_id}"
        return f"{_CHAT}{self.chat_id}"

    @property
    def private(self) -> bool:
        return self.kind is ChatKind.PRIVATE

    @classmethod
    def parse(cls, key: str) -> Scope:
        """The scope a stored key names (for ops; a key this code does not write is a
        group chat of that name)."""
        if key == DM_SCOPE:
            return cls(ChatKind.PRIVATE)
        chat = key.removeprefix(_CHAT)
        chat_id, found, thread_id = chat.rpartition(_THREAD)
        if found:
            return cls(ChatKind.THREAD, chat_id, thread_id)
        return cls(ChatKind.GROUP, chat)


DM = Scope(ChatKind.PRIVATE)


class ConversationMode(StrEnum):
    """Whether the members of a group or thread talk to the bot apart or together."""

    PER_USER = "per_user"  # each member in a conversation of their own
    SHARED = "shared"  # everyone in one: the context says who said what


# Where a chat does not choose: a thread is one conversation on Slack (as Slack's own
# AI apps keep it) and Discord (threads are short-lived, about one matter); a Telegram
# forum topic is a standing room, like a group: each member talks for themselves.
_SHARED_BY_DEFAULT = frozenset({("slack", ChatKind.THREAD), ("discord", ChatKind.THREAD)})


def default_mode(channel: str, kind: ChatKind) -> ConversationMode:
    shared = (channel, kind) in _SHARED_BY_DEFAULT
    return ConversationMode.SHARED if shared else ConversationMode.PER_USER


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One user message, normalized by a channel adapter."""

    channel: str
    channel_user_id: str
    text: str
    username: str | None = None
    platform_message_id: str | None = None
    chat_id: str | None = None  # where to reply; for groups and threads also the scope
    thread_id: str | None = None
    chat_kind: ChatKind = ChatKind.PRIVATE
    # What the adapter needs to answer the message with no platform object in hand (a
    # message taken from the inbox after a crash), where chat_id and platform_message_id
    # do not say it: Telegram's message id in its chat. Opaque to all but the adapter.
    reply_to: str | None = None

    @property
    def scope(self) -> Scope:
        """The conversation's place: a thread, a group chat, or the user's DM."""
        if self.chat_kind is ChatKind.PRIVATE:
            return DM
        thread = self.thread_id if self.chat_kind is ChatKind.THREAD else None
        return Scope(self.chat_kind, self.chat_id, thread)


# Asks the platform whether a message's writer may configure the chat it was written in
# (an admin there): each adapter gives one (bot/service.py, allow_admins).
AdminCheck = Callable[[IncomingMessage], Awaitable[bool]]


# Told each piece of a reply as the responder writes it (the piece, not the whole so
# far): the responder gives pieces to the service, the service to the adapter.
TextSink = Callable[[str], Awaitable[None]]


class Permission(StrEnum):
    """Whether a writer may configure the chat, as the platform answered."""

    GRANTED = "granted"  # the platform calls them an admin there
    DENIED = "denied"  # it does not, or the place is nobody's to configure (a DM)
    UNKNOWN = "unknown"  # no answer, or one that is no yes or no: refused all the same


class ReplyKind(StrEnum):
    ANSWER = "answer"  # the responder's reply to a stored exchange
    COMMAND = "command"  # the answer to /help, /reset, /model, /history
    RATE_LIMITED = "rate_limited"
    OVER_QUOTA = "over_quota"  # the token quota is used up: told when it starts afresh
    DUPLICATE = "duplicate"  # a redelivered event: answered already, say nothing
    INVALID = "invalid"  # bad input, refused with an explanation
    UNAVAILABLE = "unavailable"  # not answered now ("can't answer", "busy"): come again
    FAILED = "failed"  # the responder failed for good: an apology; stored without a reply
    MAINTENANCE = "maintenance"  # the `maintenance` flag is on: a polite notice, nothing stored
    MUTED = "muted"  # the `replies_disabled` flag is on: say nothing, nothing stored
    INTERRUPTED = "interrupted"  # a streamed reply cut off: its part, and a note saying so
    DEFERRED = "deferred"  # kept in the inbox, answered later (the text, if any, says so)
    BLOCKED = "blocked"  # the writer is on the blocklist: say nothing, nothing stored
    REFUSED = "refused"  # moderation refused the message (or could not check it): nothing stored


@dataclass(frozen=True, slots=True)
class Receipt:
    """An event kept in the inbox (bot/inbox.py) before the platform was told it arrived.

    `taken` is False when another live worker holds the event already: the platform
    may be told it arrived, and nothing else is done. `older` are the events of the
    same writer and place still in the inbox before it: it is answered after them.
    `resumed`: taken from the inbox after its handler died or its reply was deferred.
    """

    taken: bool
    seq: int | None = None  # None: not kept (no platform id, or the inbox is off)
    older: tuple[int, ...] = ()
    resumed: bool = False
    received_at: datetime | None = None
    told: bool = False  # the writer was told already that the answer will come
    tries: int = 0  # handlings before this one


NOT_KEPT = Receipt(taken=True)


class Interruption(StrEnum):
    """Why a streamed reply was cut off (messages.metadata: status interrupted, reason)."""

    RESPONDER = "responder"  # the LLM stream broke off, stalled, or ran out of time
    SHUTDOWN = "shutdown"  # the worker stopped before the reply was done
    # The worker stalled past its turn and another handling stored a message since:
    # this reply is not stored (it would come after that message), only shown cut off.
    OVERTAKEN = "overtaken"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the adapter sends back; `text` is None when nothing should be sent."""

    text: str | None
    kind: ReplyKind
    conversation_id: uuid.UUID | None = None
    model: str | None = None
    # The stored reply's messages.id: what a rating of the posts showing it is kept
    # against (bot/feedback.py). None for what is not a stored reply (a command's answer).
    message_id: uuid.UUID | None = None


class Rating(IntEnum):
    """A user's rating of a reply (feedback.rating)."""

    GOOD = 1
    BAD = -1


THUMBS_UP, THUMBS_DOWN = "\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}"
_SKIN_TONES = "".join(chr(c) for c in range(0x1F3FB, 0x1F400))  # 👍🏽 is a 👍 too


def rating_of(emoji: object) -> Rating | None:
    """The rating a reaction gives: 👍 good, 👎 bad (any skin tone); other emoji none."""
    if not isinstance(emoji, str):
        return None
    plain = emoji.rstrip(_SKIN_TONES + "\N{VARIATION SELECTOR-16}")
    return {THUMBS_UP: Rating.GOOD, THUMBS_DOWN: Rating.BAD}.get(plain)


@dataclass(frozen=True, slots=True)
class PostRef:
    """One message the bot posted on a platform, as a reaction names it: the chat (a
    Discord channel or thread, a Telegram chat) and the message's id in it."""

    chat_id: str
    post_id: str


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """A user's gesture on a reply, translated by its adapter: a 👍/👎 reaction set or
    taken back (Telegram, Discord), a feedback button clicked (Slack).

    The reply is named by the post the gesture was on (`post`), or directly by its
    messages.id where the platform carries it (`message_id`: Slack's button value).
    `rating` is the user's rating now (None: they have none). `withdrawn`: the rating a
    removed reaction took back; the stored one goes only if it is still that one (on
    Discord a 👍 and a 👎 can both be on a post: taking one back leaves the other).
    """

    channel: str
    channel_user_id: str
    rating: Rating | None
    post: PostRef | None = None
    message_id: uuid.UUID | None = None
    withdrawn: Rating | None = None


class FeedbackOutcome(StrEnum):
    """What became of a FeedbackEvent (the bot_feedback metric's `outcome`)."""

    RATED = "rated"  # a rating stored (new or changed)
    REMOVED = "removed"  # a stored rating deleted
    IGNORED = "ignored"  # not a reply of the bot's, a rater who never wrote, or no change


@dataclass(frozen=True, slots=True)
class ContextMessage:
    """One message of a conversation's recent context, as cached in Redis."""

    role: str
    content: str
    timestamp: datetime
    author: str | None = None  # who wrote a user message of a shared conversation
    # A summary (a `system` message) of this many earlier messages, which the context
    # holds instead of them (bot/summaries.py); None: a message as written.
    summary_of: int | None = None

    @property
    def is_summary(self) -> bool:
        return self.summary_of is not None

    def fields(self) -> dict[str, Any]:
        """Its wire form: {role, content, ts (unix s), name (only if written by someone
        named), sum (only for a summary: how many messages it covers)}, as Redis caches
        it and Postgres hands it over in one JSON array."""
        found: dict[str, Any] = {
            "role": self.role,
            "content": self.content,
            "ts": self.timestamp.timestamp(),
        }
        if self.author is not None:
            found["name"] = self.author
        if self.summary_of is not None:
            found["sum"] = self.summary_of
        return found

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> ContextMessage:
        """From its wire form; KeyError, TypeError or ValueError if it is not one."""
        author, covers = data.get("name"), data.get("sum")
        return cls(
            role=str(data["role"]),
            content=str(data["content"]),
            timestamp=datetime.fromtimestamp(float(data["ts"]), UTC),
            author=author if isinstance(author, str) else None,
            summary_of=None if covers is None else int(covers),
        )


def summary_label(covers: int) -> str:
    """How a summary is shown among messages (/history, `bot ops conversation show`)."""
    return f"[summary of {covers} earlier message{'' if covers == 1 else 's'}]"


@dataclass(frozen=True, slots=True)
class RecentContext:
    """A conversation's newest messages (newest first), and the newest message stored
    when they were read (conversations.last_message_id): the turn's fence, which the
    next message is stored against (bot/store/conversations.py). Redis keeps it in the
    session hash, written with the context list.

    A summarised conversation's context ends (oldest) with its latest summary, and
    holds only the messages after what it covers; Redis keeps the summary in the
    session hash too, beside the fence, so that trimming the list never drops it."""

    messages: list[ContextMessage]
    last_id: uuid.UUID | None

    @property
    def summary(self) -> ContextMessage | None:
        oldest = self.messages[-1] if self.messages else None
        return oldest if oldest is not None and oldest.is_summary else None


@dataclass(frozen=True, slots=True)
class SessionState:
    """Who is talking and in which conversation: the `session:*` hash, typed."""

    user_id: uuid.UUID
    conversation_id: uuid.UUID
    model: str | None  # conversation override, else the user's preference, else None
    # `model` is the conversation's override (/model in a group or thread, or a pinned
    # conversation), which an experiment's variant does not beat; else a preference.
    pinned: bool = False


def resolve_model(
    session: SessionState,
    channel: ChannelSettings,
    default_model: str,
    variant_model: str | None = None,
) -> str:
    """Conversation override > experiment variant > user preference > channel default >
    DEFAULT_MODEL."""
    if session.pinned and session.model:
        return session.model
    return variant_model or session.model or channel.default_model or default_model


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """A channel's `channel_configs` row, or the defaults when there is none."""

    default_model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def rate_limit(self, fallback: int) -> int:
        value = self.settings.get("rate_limit_per_minute")
        return value if isinstance(value, int) and value > 0 else fallback

    def over(self, base: ChannelSettings) -> ChannelSettings:
        """These settings laid over `base` (a chat's over its platform's, a thread's over
        its chat's): what is set here wins, the rest comes from below."""
        if not self.default_model and not self.settings:
            return base
        model = self.default_model or base.default_model
        return ChannelSettings(model, {**base.settings, **self.settings})

    @property
    def muted(self) -> bool:
        """A chat an operator or its admins silenced: messages are ignored, nothing stored."""
        return self.settings.get("muted") is True


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """A user's session and recent context (newest first), as Postgres has them: what
    `bot ops cache warm` puts back in Redis."""

    channel: str
    channel_user_id: str
    scope: str  # Scope.key
    session: SessionState
    last_activity: datetime
    context: RecentContext


@dataclass(frozen=True, slots=True)
class StoredExchange:
    """What storing one exchange found: the user's message row it wrote (or found)."""

    user_message_id: uuid.UUID
    duplicate: bool = False  # the platform event was stored before, by another handling
    reply_text: str | None = None  # of a duplicate: the reply stored with it, if any
    reply_model: str | None = None
    reply_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class BlockedRow:
    """One `blocked_users` row: a platform user the bot ignores."""

    channel: str
    channel_user_id: str
    reason: str | None = None
    blocked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FlagRow:
    """One `feature_flags` row: scope is 'global' or a channel name; value is JSON."""

    scope: str
    name: str
    value: Any
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChatConfigRow:
    """One `chat_configs` row as ops show it; thread_id '' is the chat itself."""

    channel: str
    chat_id: str
    thread_id: str
    default_model: str | None
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def layer(self) -> ChannelSettings:
        return ChannelSettings(self.default_model, self.settings)


@dataclass(frozen=True, slots=True)
class ChannelConfigRow:
    """One `channel_configs` row as ops show it."""

    channel: str
    default_model: str | None
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime
