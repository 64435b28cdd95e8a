"""Each reply knows the message it answers: messages.reply_to, at most one reply each.

- messages.reply_to: the user message an assistant message answers (NULL for user
  messages). A partial unique index allows one reply per user message: an event is
  never answered twice in Postgres, whichever worker streams it. A link, not a
  foreign key: `bot ops purge` deletes each message by its own age, and a delete
  never has to lock or touch the other message of the pair.
- Existing replies are linked to the user message just before them in their
  conversation, as the code read them until now (one pass over `messages`).
- A streamed reply that was cut off says so in messages.metadata:
  {"status": "interrupted", "reason": "..."} (no schema change).

Downgrade drops the column and its index; every message stays.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LINK_EXISTING = """
UPDATE messages AS reply SET reply_to = earlier.previous_id
FROM (
    SELECT id, role,
           lag(id) OVER turn AS previous_id, lag(role) OVER turn AS previous_role
    FROM messages
    WINDOW turn AS (PARTITION BY conversation_id ORDER BY timestamp, role DESC)
) AS earlier
WHERE reply.id = earlier.id AND earlier.role = 'assistant' AND earlier.previous_role = 'user'
"""


def upgrade() -> None:
    op.add_column("messages", sa.Column("reply_to", sa.UUID(), nullable=True))
    op.execute(_LINK_EXISTING)
    op.create_index(
        "uq_messages_one_reply",
        "messages",
        ["reply_to"],
        unique=True,
        postgresql_where=sa.text("reply_to IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_messages_one_reply", table_name="messages")
    op.drop_column("messages", "reply_to")
