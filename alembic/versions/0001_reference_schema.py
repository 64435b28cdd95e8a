"""The reference schema: users, conversations, messages, channel_configs.

Plus what the invariants need, enforced by Postgres: one active conversation per
user (partial unique index) and each platform message stored once per channel.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID_PK = dict(server_default=sa.text("gen_random_uuid()"), nullable=False)
NOW = dict(server_default=sa.text("now()"), nullable=False)
EMPTY_JSON = dict(server_default=sa.text("'{}'::jsonb"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), **UUID_PK),
        sa.Column("channel_type", sa.String(32), nullable=False),
        sa.Column("channel_user_id", sa.String(255), nullable=False),
        sa.Column("username", sa.String(255), nullable=True),
        sa.Column("preferred_model", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), **NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), **NOW),
        sa.Column("metadata", postgresql.JSONB(), **EMPTY_JSON),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint(
            "channel_type", "channel_user_id", name="uq_users_channel_type_channel_user_id"
        ),
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.UUID(), **UUID_PK),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("channel_type", sa.String(32), nullable=False),
        sa.Column("model_override", sa.String(100), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), **NOW),
        sa.Column("last_activity", sa.DateTime(timezone=True), **NOW),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), **EMPTY_JSON),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_conversations_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_conversations_user_id", "conversations", ["user_id"])
    op.create_index(
        "ix_conversations_last_activity", "conversations", [sa.text("last_activity DESC")]
    )
    op.create_index("ix_conversations_is_active_user_id", "conversations", ["is_active", "user_id"])
    op.create_index(
        "uq_conversations_one_active_per_user",
        "conversations",
        ["user_id"],
        unique=True,
        postgresql_where=sa.text("is_active"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.UUID(), **UUID_PK),
        sa.Column("conversation_id", sa.UUID(), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("model_used", sa.String(100), nullable=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), **NOW),
        sa.Column("token_count", sa.Integer(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), **EMPTY_JSON),
        sa.Column("channel_type", sa.String(32), nullable=False),
        sa.Column("platform_message_id", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "role IN ('user', 'assistant', 'system')", name=op.f("ck_messages_role")
        ),
        sa.UniqueConstraint(
            "channel_type",
            "platform_message_id",
            name="uq_messages_channel_type_platform_message_id",
        ),
    )
    op.create_index(
        "ix_messages_conversation_id_timestamp",
        "messages",
        ["conversation_id", sa.text("timestamp DESC")],
    )
    op.create_index("ix_messages_timestamp", "messages", [sa.text("timestamp DESC")])
    op.create_table(
        "channel_configs",
        sa.Column("id", sa.UUID(), **UUID_PK),
        sa.Column("channel_type", sa.String(32), nullable=False),
        sa.Column("default_model", sa.String(100), nullable=True),
        sa.Column("settings", postgresql.JSONB(), **EMPTY_JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), **NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), **NOW),
        sa.PrimaryKeyConstraint("id", name="pk_channel_configs"),
        sa.UniqueConstraint("channel_type", name="uq_channel_configs_channel_type"),
    )


def downgrade() -> None:
    op.drop_table("channel_configs")
    op.drop_table("messages")
    op.drop_table("conversations")
    op.drop_table("users")
