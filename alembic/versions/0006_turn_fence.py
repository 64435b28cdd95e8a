"""A conversation's turn, fenced in Postgres: ordering that no Redis eviction can break.

- conversations.last_message_id: the newest message stored in the conversation. A
  message is stored only if the context it was answered with ended at this message;
  otherwise another handling stored something since (its Redis lock was evicted, or
  Redis was away) and the message is answered again on the newer context. Not a
  foreign key: `bot ops purge` deletes messages by age without touching conversations.
- conversations.reply_due: while a streamed reply to the newest (user) message is being
  written, until when its worker holds the turn (renewed as it writes; NULL: nobody).
  Another message of the conversation waits for it, or for it to lapse.
- Active conversations learn their newest message (one pass over their messages);
  closed ones take no more messages and keep NULL.

Downgrade drops both columns; every message stays.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The newest message as the context is read: by timestamp, a user message first on a tie.
_NEWEST_OF_ACTIVE = """
UPDATE conversations AS c SET last_message_id = (
    SELECT m.id FROM messages AS m WHERE m.conversation_id = c.id
    ORDER BY m.timestamp DESC, m.role DESC LIMIT 1
)
WHERE c.is_active
"""


def upgrade() -> None:
    op.add_column("conversations", sa.Column("last_message_id", sa.UUID(), nullable=True))
    op.add_column(
        "conversations", sa.Column("reply_due", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute(_NEWEST_OF_ACTIVE)


def downgrade() -> None:
    op.drop_column("conversations", "reply_due")
    op.drop_column("conversations", "last_message_id")
