"""The blocklist: platform users the bot ignores (bot ops user block).

Keyed by the platform's user id, not users.id: a user can be blocked before they ever
wrote. Each worker holds the whole list in memory (bot/blocklist.py).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blocked_users",
        sa.Column("channel_type", sa.String(32), nullable=False),
        sa.Column("channel_user_id", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "blocked_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("channel_type", "channel_user_id", name="pk_blocked_users"),
    )


def downgrade() -> None:
    op.drop_table("blocked_users")
