"""SQLAlchemy models of the reference schema (DESIGN.md, "Tables").

Alembic revisions are written to match these exactly; `alembic check` proves it.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot.store.summaries import SUMMARY_MARK

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("user", "assistant", "system")

# The partitions of `messages` (revision 0007): one per month, messages_pYYYY_MM, and
# the default one. Made and dropped at run time, so no model and no migration has them.
DEFAULT_PARTITION = "messages_default"
MESSAGE_PARTITION = re.compile(r"messages_(default|p\d{4}_\d{2})")


def is_message_partition(table: str) -> bool:
    return MESSAGE_PARTITION.fullmatch(table) is not None


def modelled(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Whether the models describe a schema object (Alembic's include_object): all but
    the partitions of messages, their indexes, and the foreign keys Postgres keeps to
    each of them, which the worker makes and drops at run time."""
    if type_ == "table":
        table = name
    elif type_ == "foreign_key_constraint":
        table = obj.referred_table.name
    else:
        table = getattr(getattr(obj, "table", None), "name", None)
    return not (table and is_message_partition(table))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=text("now()"))


def _jsonb() -> Mapped[dict[str, Any]]:
    return mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))


def _metadata() -> Mapped[dict[str, Any]]:
    # `metadata` is taken on declarative classes, so the attribute is metadata_.
    return mapped_column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb"))


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("channel_type", "channel_user_id"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    channel_type: Mapped[str] = mapped_column(String(32), nullable=False)
    channel_user_id: Mapped[str] = mapped_column(String(255), nullable=False)
    username: Mapped[str | None] = mapped_column(String(255))
    preferred_model: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    metadata_: Mapped[dict[str, Any]] = _metadata()


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_user_id", "user_id"),
        Index("ix_conversations_last_activity", text("last_activity DESC")),
        Index("ix_conversations_is_active_user_id", "is_active", "user_id"),
        # Invariant 3: at most one active conversation per user and scope, and per scope
        # for a shared one (no user), enforced by Postgres (revision 0004).
        Index(
            "uq_conversations_one_active_per_user_scope",
            "user_id",
            "scope",
            unique=True,
            postgresql_where=text("is_active"),
        ),
        Index(
            "uq_conversations_one_active_per_shared_scope",
            "channel_type",
            "scope",
            unique=True,
            postgresql_where=text("is_active AND user_id IS NULL"),
        ),
        # A group chat's conversations, its threads' included (revision 0014): what its
        # token quota counts (bot/store/usage.py, `spent`).
        Index("ix_conversations_chat", "channel_type", text("split_part(scope, ':thread:', 1)")),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    # NULL: a shared conversation, which belongs to its scope rather than to a user.
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE")
    )
    channel_type: Mapped[str] = mapped_column(String(32), nullable=False)
    # Where it happens (bot/domain.py, Scope): 'dm', 'chat:{id}' or 'chat:{id}:thread:{id}'.
    scope: Mapped[str] = mapped_column(String(300), nullable=False, server_default=text("'dm'"))
    model_override: Mapped[str | None] = mapped_column(String(100))
    started_at: Mapped[datetime] = _now()
    last_activity: Mapped[datetime] = _now()
    is_active: Mapped[bool] = mapped_column(nullable=False, server_default=text("true"))
    # The turn's fence (revision 0006): the newest message stored, and until when a
    # streamed reply to it is being written (NULL: nobody is writing one).
    last_message_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    reply_due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any]] = _metadata()


class Message(Base):
    """Partitioned by month of `timestamp` (revision 0007): a unique key must hold the
    partition key, so the keys that must be unique by themselves (a platform event, a
    user message's one reply) live in MessageEvent and MessageReply."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant', 'system')", name="role"),
        Index("ix_messages_conversation_id_timestamp", "conversation_id", text("timestamp DESC")),
        Index("ix_messages_timestamp", text("timestamp DESC")),
        # Full-text search of `bot ops conversation search` (revision 0003): queries use
        # the same expression, to_tsvector('simple', content) @@ websearch_to_tsquery(…).
        Index(
            "ix_messages_content_fts",
            text("to_tsvector('simple'::regconfig, content)"),
            postgresql_using="gin",
        ),
        Index("ix_messages_author_id", "author_id", postgresql_where=text("author_id IS NOT NULL")),
        # A conversation's latest summary, found without reading its messages (revision
        # 0013; the predicate is bot/store/summaries.py's is_summary).
        Index(
            "ix_messages_summary",
            "conversation_id",
            text("timestamp DESC"),
            postgresql_where=text(f"role = 'system' AND metadata @> '{SUMMARY_MARK}'::jsonb"),
        ),
        {"postgresql_partition_by": "RANGE (timestamp)"},
    )

    # (id, timestamp): a partitioned table's key holds the partition key. The id alone
    # is unique all the same (a random UUID), and a retried write repeats both.
    id: Mapped[uuid.UUID] = _uuid_pk()
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    model_used: Mapped[str | None] = mapped_column(String(100))
    timestamp: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), primary_key=True, server_default=text("now()")
    )
    token_count: Mapped[int | None] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    channel_type: Mapped[str] = mapped_column(String(32), nullable=False)
    platform_message_id: Mapped[str | None] = mapped_column(String(255))
    # Who wrote a user message of a shared conversation; NULL: the conversation's user.
    author_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE")
    )
    # The user message an assistant message answers; NULL for user messages. A link,
    # not a foreign key: purging deletes each message by its own age (revision 0005).
    reply_to: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


# Rows of a month without a partition of its own land here rather than being refused;
# `bot ops partitions create` moves them into their month's partition (revision 0007).
event.listen(
    Message.__table__,
    "after_create",
    DDL(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF messages DEFAULT"),  # type: ignore[no-untyped-call]
)


def _message_key(prefix: str) -> ForeignKeyConstraint:
    """The stored message a claim is for: it goes when the message goes, and follows
    when its time is changed (which moves the message to another partition)."""
    return ForeignKeyConstraint(
        [f"{prefix}_id", f"{prefix}_timestamp"],
        ["messages.id", "messages.timestamp"],
        ondelete="CASCADE",
        onupdate="CASCADE",
    )


class MessageEvent(Base):
    """Invariant 2: a platform event is stored at most once per channel (revision 0007).

    Written in the statement that stores its message, and first: the message goes in
    only if this row did. Replies and console lines (no platform id) have none.
    """

    __tablename__ = "message_events"
    __table_args__ = (
        _message_key("message"),
        # Retention deletes by time; a message's delete cascades by (id, timestamp).
        Index("ix_message_events_message_timestamp_message_id", "message_timestamp", "message_id"),
    )

    channel_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    platform_message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    message_timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class MessageReply(Base):
    """One reply per user message, whoever streams it (revisions 0005, 0007): the reply
    goes in only if this row, keyed by the user message, did."""

    __tablename__ = "message_replies"
    __table_args__ = (
        _message_key("reply"),
        Index("ix_message_replies_reply_timestamp_reply_id", "reply_timestamp", "reply_id"),
    )

    reply_to: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    reply_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    reply_timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ChannelConfig(Base):
    __tablename__ = "channel_configs"
    __table_args__ = (UniqueConstraint("channel_type"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    channel_type: Mapped[str] = mapped_column(String(32), nullable=False)
    default_model: Mapped[str | None] = mapped_column(String(100))
    settings: Mapped[dict[str, Any]] = _jsonb()
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class ChatConfig(Base):
    """A chat's (or a thread's) settings over its platform's channel_configs row
    (revision 0004); thread_id '' is the chat itself."""

    __tablename__ = "chat_configs"
    __table_args__ = (UniqueConstraint("channel_type", "chat_id", "thread_id"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    channel_type: Mapped[str] = mapped_column(String(32), nullable=False)
    chat_id: Mapped[str] = mapped_column(String(255), nullable=False)
    thread_id: Mapped[str] = mapped_column(String(255), nullable=False, server_default=text("''"))
    default_model: Mapped[str | None] = mapped_column(String(100))
    settings: Mapped[dict[str, Any]] = _jsonb()
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class FeatureFlag(Base):
    """A feature flag; scope is 'global' or a channel name (revision 0002)."""

    __tablename__ = "feature_flags"
    __table_args__ = (UniqueConstraint("scope", "name"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    scope: Mapped[str] = mapped_column(String(32), nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[Any] = mapped_column(JSONB, nullable=False)
    updated_at: Mapped[datetime] = _now()


class InboxEvent(Base):
    """A platform event kept before the platform was told it arrived (revision 0008),
    until its reply is delivered: a worker that dies leaves it for another to answer
    (bot/inbox.py). `place` orders it: writer, platform and scope; `seq` is the order
    of arrival. The holder answers it until `held_until`, renewing while it works."""

    __tablename__ = "inbox"
    __table_args__ = (
        Index("ix_inbox_place_seq", "place", "seq"),
        Index("ix_inbox_held_until", "held_until"),
    )

    channel_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    platform_message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), nullable=False, unique=True)
    place: Mapped[str] = mapped_column(Text, nullable=False)
    message: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    received_at: Mapped[datetime] = _now()
    holder: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    held_until: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    tries: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    told: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))


class BlockedUser(Base):
    """A platform user the bot ignores (revision 0010), by platform id: blocked before
    they ever wrote, if need be. Each worker holds the list in memory (bot/blocklist.py)."""

    __tablename__ = "blocked_users"

    channel_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    reason: Mapped[str | None] = mapped_column(Text)
    blocked_at: Mapped[datetime] = _now()


class Experiment(Base):
    """An A/B model experiment (revision 0009): variants [{name, model, share}], fixed
    once created; scope 'global' or a channel; running while stopped_at is NULL, at
    most one per scope."""

    __tablename__ = "experiments"
    __table_args__ = (
        Index(
            "uq_experiments_one_running_per_scope",
            "scope",
            unique=True,
            postgresql_where=text("stopped_at IS NULL"),
        ),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    variants: Mapped[Any] = mapped_column(JSONB, nullable=False)
    scope: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = _now()
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ExperimentAssignment(Base):
    """The variant a user was assigned in an experiment (revision 0009), written with
    their first exchange in it: it survives a Redis flush."""

    __tablename__ = "experiment_assignments"
    __table_args__ = (Index("ix_experiment_assignments_user_id", "user_id"),)

    experiment: Mapped[str] = mapped_column(
        String(64), ForeignKey("experiments.name", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    variant: Mapped[str] = mapped_column(String(32), nullable=False)
    assigned_at: Mapped[datetime] = _now()


class Feedback(Base):
    """A user's latest rating of a reply (revision 0011): 1 good, -1 bad. message_id is
    the reply's messages.id, with no foreign key (messages is partitioned)."""

    __tablename__ = "feedback"
    __table_args__ = (
        CheckConstraint("rating IN (-1, 1)", name="rating"),
        Index("ix_feedback_user_id", "user_id"),
    )

    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    rating: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class ReplyPost(Base):
    """One of the bot's platform messages and the stored reply it shows (revision
    0012): a reaction names the post, this finds the reply it rates."""

    __tablename__ = "reply_posts"
    __table_args__ = (Index("ix_reply_posts_created_at", "created_at"),)

    channel_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    post_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    created_at: Mapped[datetime] = _now()
