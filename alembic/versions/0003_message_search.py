"""Full-text search over messages: a GIN index on to_tsvector('simple', content).

An expression index rather than a stored tsvector column: a generated column would
rewrite the whole messages table and store every message twice; the index is built
beside the table and Postgres keeps it current on every insert. The 'simple'
configuration lowercases words and never stems or drops stop words, so search works
alike for every language users write in. Queries must use the same expression to be
served by the index:

    to_tsvector('simple', content) @@ websearch_to_tsquery('simple', :text)

The index is built inside the migration's transaction, which blocks writes to
messages while it builds (seconds per million rows). On a large deployment, build it
first without blocking, then migrate; IF NOT EXISTS makes the migration accept it:

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_messages_content_fts
        ON messages USING gin (to_tsvector('simple'::regconfig, content));

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_messages_content_fts"


def upgrade() -> None:
    op.create_index(
        INDEX,
        "messages",
        [sa.text("to_tsvector('simple'::regconfig, content)")],
        postgresql_using="gin",
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index(INDEX, "messages", if_exists=True)
