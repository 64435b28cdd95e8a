"""Rows as `bot ops` reads them (bot/store/ops_queries.py, bot/store/monitoring.py).

Fields are in the order of the columns selected: `bot ops … --json` prints each row
as an object with its keys in this order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# --- users and conversations ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRow:
    id: uuid.UUID
    channel_type: str
    channel_user_id: str
    username: str | None
    preferred_model: str | None
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """One of a user's conversations, with its message and token totals: their own, or
    a shared one they wrote in (then the totals are of what they wrote)."""

    id: uuid.UUID
    scope: str  # where it happens (bot/domain.py, Scope.key)
    shared: bool  # everyone's in a group or thread; the user wrote some of it
    is_active: bool
    model_override: str | None
    started_at: datetime
    last_activity: datetime
    metadata: dict[str, Any]
    messages: int
    tokens: int


@dataclass(frozen=True, slots=True)
class UserConversations:
    user: UserRow
    conversations: tuple[ConversationSummary, ...]  # newest first

    @property
    def messages(self) -> int:
        return sum(conversation.messages for conversation in self.conversations)


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A whole `messages` row, as an export holds it."""

    id: uuid.UUID
    role: str
    content: str
    model_used: str | None
    token_count: int | None
    timestamp: datetime
    platform_message_id: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExportedConversation:
    conversation: ConversationSummary
    messages: tuple[MessageRow, ...]  # oldest first


@dataclass(frozen=True, slots=True)
class UserExport:
    """Everything Postgres holds about one user, read in one snapshot."""

    user: UserRow
    conversations: tuple[ExportedConversation, ...]


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """A conversation with who it belongs to and how many messages it has."""

    id: uuid.UUID
    channel_type: str
    scope: str
    is_active: bool
    model_override: str | None
    started_at: datetime
    last_activity: datetime
    user_id: uuid.UUID | None  # None: a shared conversation, everyone's in its scope
    channel_user_id: str | None
    username: str | None
    messages: int


@dataclass(frozen=True, slots=True)
class ChatConversation:
    """A conversation held in a chat (or one of its threads)."""

    id: uuid.UUID
    scope: str
    is_active: bool
    channel_user_id: str | None  # None: a shared conversation, everyone's
    username: str | None
    last_activity: datetime
    messages: int


@dataclass(frozen=True, slots=True)
class RecentMessage:
    id: uuid.UUID
    role: str
    model_used: str | None
    token_count: int | None
    timestamp: datetime
    content: str
    summary_of: int | None  # a summary: how many messages it covers (bot/summaries.py)


@dataclass(frozen=True, slots=True)
class ConversationHistory:
    conversation: ConversationRow
    messages: tuple[RecentMessage, ...]  # the newest few, oldest first


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """The user message stored for a platform event, and the reply stored after it."""

    message_id: uuid.UUID
    conversation_id: uuid.UUID
    channel_user_id: str
    timestamp: datetime
    reply_id: uuid.UUID | None
    reply_timestamp: datetime | None
    reply_model: str | None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A message matching a full-text search, with a snippet around the matched words."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    channel: str
    channel_user_id: str | None  # who wrote it; None: the bot's reply in a shared conversation
    username: str | None
    role: str
    timestamp: datetime
    snippet: str


# --- activity and table statistics ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConversationActivity:
    open: int  # active, however long ago their last message was
    active_last_hour: int  # with a message in the last hour, open or not
    active_last_24h: int


@dataclass(frozen=True, slots=True)
class MessageCounts:
    """Messages of the last hour and 24 hours that share one value."""

    value: str  # the channel, or the model that wrote the reply ('?' if not noted)
    last_hour: int
    last_24h: int


@dataclass(frozen=True, slots=True)
class TableUsage:
    table: str
    rows: int
    total_bytes: int
    table_bytes: int
    index_bytes: int
    seq_scan: int | None
    idx_scan: int | None  # None: the table has no index


@dataclass(frozen=True, slots=True)
class IndexUsage:
    table: str
    index: str
    scans: int
    tuples_read: int
    bytes: int


@dataclass(frozen=True, slots=True)
class PostgresActivity:
    """Conversations and messages of the last 24 hours: what the rows say, the same on a
    replica as on the primary."""

    conversations: ConversationActivity
    messages_by_channel: tuple[MessageCounts, ...]
    replies_by_model: tuple[MessageCounts, ...]


@dataclass(frozen=True, slots=True)
class PostgresUsage:
    """The size and use of the tables and indexes of the current schema: each server's
    own statistics (a standby counts its own scans and no live rows)."""

    tables: tuple[TableUsage, ...]
    indexes: tuple[IndexUsage, ...]


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A server read as a replica: whether it is in recovery, how many bytes of the
    primary's WAL it has yet to replay (None: not a standby, or the primary's position
    unknown), and the seconds since the last transaction it replayed (None: none yet)."""

    in_recovery: bool
    lag_bytes: int | None
    since_last_replay: float | None
