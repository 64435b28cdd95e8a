"""Conversations belong to the place where they happen: a scope, and per-chat settings.

- conversations.scope: 'dm' for a private chat with the bot (and the console), else
  'chat:{chat id}' for a group chat or channel, or 'chat:{chat id}:thread:{thread id}'
  for a thread in one (bot/domain.py, Scope). Existing conversations become DM
  conversations: today's one conversation per user is the user's DM conversation.
- conversations.user_id may be NULL: a shared conversation (everyone in the chat
  talks in one) belongs to its scope, not to a user.
- At most one active conversation per (user, scope), and per scope when shared:
  partial unique indexes, replacing the one active conversation per user.
- messages.author_id: who wrote a user message of a shared conversation (NULL: the
  conversation's user). Erasing a user erases what they said in shared chats too.
- chat_configs: a chat's (or a thread's) settings over its platform's channel_configs
  row; thread_id '' is the chat itself.

Adding the columns rewrites nothing (constant defaults, a nullable column). The index
swap blocks writes to conversations while the new unique index builds (about a
second per million conversations).

Downgrade keeps every per-user conversation and message. It deletes shared
conversations with their messages (the old schema cannot hold a conversation without
a user), drops the per-chat settings, and closes all but one active conversation per
user: the DM one if there is one, else the most recent (closed ones stay as history).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = dict(server_default=sa.text("now()"), nullable=False)
OLD_UNIQUE = "uq_conversations_one_active_per_user"
PER_USER = "uq_conversations_one_active_per_user_scope"
SHARED = "uq_conversations_one_active_per_shared_scope"


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("scope", sa.String(300), server_default=sa.text("'dm'"), nullable=False),
    )
    op.alter_column("conversations", "user_id", nullable=True)
    op.drop_index(OLD_UNIQUE, table_name="conversations")
    op.create_index(
        PER_USER,
        "conversations",
        ["user_id", "scope"],
        unique=True,
        postgresql_where=sa.text("is_active"),
    )
    op.create_index(
        SHARED,
        "conversations",
        ["channel_type", "scope"],
        unique=True,
        postgresql_where=sa.text("is_active AND user_id IS NULL"),
    )
    op.add_column("messages", sa.Column("author_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        "fk_messages_author_id_users",
        "messages",
        "users",
        ["author_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        "ix_messages_author_id",
        "messages",
        ["author_id"],
        postgresql_where=sa.text("author_id IS NOT NULL"),
    )
    op.create_table(
        "chat_configs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("channel_type", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(255), nullable=False),
        sa.Column("thread_id", sa.String(255), server_default=sa.text("''"), nullable=False),
        sa.Column("default_model", sa.String(100), nullable=True),
        sa.Column(
            "settings",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), **NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), **NOW),
        sa.PrimaryKeyConstraint("id", name="pk_chat_configs"),
        sa.UniqueConstraint(
            "channel_type",
            "chat_id",
            "thread_id",
            name="uq_chat_configs_channel_type_chat_id_thread_id",
        ),
    )


def downgrade() -> None:
    op.drop_table("chat_configs")
    op.drop_index("ix_messages_author_id", table_name="messages")
    op.drop_constraint("fk_messages_author_id_users", "messages", type_="foreignkey")
    op.drop_column("messages", "author_id")
    op.execute("DELETE FROM conversations WHERE user_id IS NULL")
    op.execute(
        """
        UPDATE conversations AS c SET is_active = false
        WHERE c.is_active AND EXISTS (
            SELECT 1 FROM conversations AS o
            WHERE o.user_id = c.user_id AND o.is_active AND o.id <> c.id
              AND (o.scope = 'dm', o.last_activity, o.id) > (c.scope = 'dm', c.last_activity, c.id)
        )
        """
    )
    op.drop_index(SHARED, table_name="conversations")
    op.drop_index(PER_USER, table_name="conversations")
    op.create_index(
        OLD_UNIQUE, "conversations", ["user_id"], unique=True, postgresql_where=sa.text("is_active")
    )
    op.alter_column("conversations", "user_id", nullable=False)
    op.drop_column("conversations", "scope")
