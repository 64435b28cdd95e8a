"""Reply posts: which platform message shows which stored reply (issue 18, feedback).

- reply_posts(channel_type, chat_id, post_id): one of the bot's messages on a platform
  (a Discord channel or thread and message id, a Telegram chat and message id), and
  message_id, the stored reply it shows (messages.id; no foreign key, messages is
  partitioned). A reaction names the post; this finds the reply it rates. A reply cut
  into several posts has a row for each. Written after the reply is delivered, in
  batches (bot/feedback.py); created_at indexed for a purge by age.

Downgrade drops the table: reactions on earlier replies are then ignored.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = dict(server_default=sa.text("now()"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "reply_posts",
        sa.Column("channel_type", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(255), nullable=False),
        sa.Column("post_id", sa.String(255), nullable=False),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), **NOW),
        sa.PrimaryKeyConstraint("channel_type", "chat_id", "post_id", name="pk_reply_posts"),
    )
    op.create_index("ix_reply_posts_created_at", "reply_posts", ["created_at"])


def downgrade() -> None:
    op.drop_table("reply_posts")
