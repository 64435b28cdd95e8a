"""The conversations of a group chat, its threads included, found by index: what a chat's
token quota counts (bot/store/usage.py, `spent`; bot/quotas.py).

- ix_conversations_chat (channel_type, split_part(scope, ':thread:', 1)): a thread's
  scope 'chat:{id}:thread:{id}' and its chat's 'chat:{id}' (bot/domain.py, Scope) both
  map to 'chat:{id}'. A chat's counters are rebuilt from it when Redis lost them.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_conversations_chat",
        "conversations",
        ["channel_type", sa.text("split_part(scope, ':thread:', 1)")],
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_chat", table_name="conversations")
