"""Conversation summaries (bot/summaries.py): a summary is a `system` message whose
metadata says {"summary": true, ...}, so it needs no column; this index finds a
conversation's latest one without reading its messages (every context read asks).

Downgrade drops the index; summaries stay, as system messages.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_summary",
        "messages",
        ["conversation_id", sa.text("timestamp DESC")],
        postgresql_where=sa.text("role = 'system' AND metadata @> '{\"summary\": true}'::jsonb"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_summary", table_name="messages")
