"""The inbox: every platform event kept in Postgres before the platform is told it
arrived, until its reply is delivered (bot/inbox.py).

- inbox(channel_type, platform_message_id): one row per event in hand, keyed as
  message_events is, so a redelivery finds its row.
- seq: the order of arrival; place: the writer's platform, scope and id, the order
  that is kept across workers; message: the normalized event (JSONB).
- holder, held_until: the worker answering it and its lease, renewed while it works;
  a lapsed lease is taken over by another worker, oldest first per place.
- tries, told: handlings so far; whether the writer was told the answer will come.

Downgrade drops the table: what it held is unanswered events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("channel_type", sa.String(32), nullable=False),
        sa.Column("platform_message_id", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("place", sa.Text(), nullable=False),
        sa.Column("message", postgresql.JSONB(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("holder", sa.UUID(), nullable=False),
        sa.Column("held_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tries", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("told", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("channel_type", "platform_message_id", name="pk_inbox"),
        sa.UniqueConstraint("seq", name="uq_inbox_seq"),
    )
    op.create_index("ix_inbox_place_seq", "inbox", ["place", "seq"])
    op.create_index("ix_inbox_held_until", "inbox", ["held_until"])


def downgrade() -> None:
    op.drop_table("inbox")
