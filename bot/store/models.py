"""SQLAlchemy models of the reference schema (DESIGN.md, "Tables").

Alembic revisions are written to match these exactly; `alembic check` proves it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("user", "assistant", "system")


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
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant', 'system')", name="role"),
        Index("ix_messages_conversation_id_timestamp", "conversation_id", text("timestamp DESC")),
        Index("ix_messages_timestamp", text("timestamp DESC")),
        # Invariant 2: a redelivered platform event is stored at most once per channel.
        # NULLs are distinct, so replies and console lines (no platform id) never collide.
        UniqueConstraint("channel_type", "platform_message_id"),
        # Full-text search of `bot ops conversation search` (revision 0003): queries use
        # the same expression, to_tsvector('simple', content) @@ websearch_to_tsquery(…).
        Index(
            "ix_messages_content_fts",
            text("to_tsvector('simple'::regconfig, content)"),
            postgresql_using="gin",
        ),
        Index("ix_messages_author_id", "author_id", postgresql_where=text("author_id IS NOT NULL")),
        # One reply per user message (revision 0005), whoever streams it.
        Index(
            "uq_messages_one_reply",
            "reply_to",
            unique=True,
            postgresql_where=text("reply_to IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    model_used: Mapped[str | None] = mapped_column(String(100))
    timestamp: Mapped[datetime] = _now()
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
