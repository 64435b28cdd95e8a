"""Monthly partitions of `messages`, and the keys partitioning cannot hold beside them.

- messages becomes PARTITION BY RANGE (timestamp): one partition per calendar month
  (UTC), `messages_pYYYY_MM`, plus `messages_default` for any row of a month that has
  no partition yet (never refused; `bot ops partitions create` moves such rows into
  their month later). Whole old months are dropped by retention instead of deleted
  row by row. The primary key becomes (id, timestamp), as a partitioned table's key
  must hold the partition key.
- message_events (channel_type, platform_message_id) -> message: invariant 2's
  exactly-once storage of platform events, which was a unique key of messages.
- message_replies (reply_to) -> reply: one reply per user message, which was the
  partial unique index uq_messages_one_reply.
  Both are written in the statement that stores their message, before it, and
  reference it (id, timestamp) ON DELETE CASCADE ON UPDATE CASCADE: a claim never
  outlives its message.
- No other table references messages (conversations.last_message_id and
  messages.reply_to are links, not foreign keys: revisions 0005, 0006).

Existing rows are copied in batches of the old table's pages (a TID range scan, no
sort), one log line per batch; the indexes, keys and foreign keys are built once
the rows are in, which is several times faster than keeping them up to date row by
row. The partitions made are every month holding data and the current month with
PARTITIONS_AHEAD more. The whole revision is one transaction (the table is locked
throughout): about half a minute per million rows on a small server.

Downgrade copies the rows back into one plain table the same way, with the unique
keys of revisions 0001 and 0005; every message stays.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.0007_message_partitions")

PARTITIONS_AHEAD = 3  # months after the current one, as the worker keeps (bot/config.py)
BATCH_PAGES = 1000  # heap pages per batch (8 MB): some 25,000 to 100,000 messages

COLUMNS = (
    "id, conversation_id, role, content, model_used, timestamp, token_count, metadata, "
    "channel_type, platform_message_id, author_id, reply_to"
)
_TABLE = """
CREATE TABLE {name} (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    conversation_id uuid NOT NULL,
    role varchar(20) NOT NULL,
    content text NOT NULL,
    model_used varchar(100),
    timestamp timestamptz DEFAULT now() NOT NULL,
    token_count integer,
    metadata jsonb DEFAULT '{{}}'::jsonb NOT NULL,
    channel_type varchar(32) NOT NULL,
    platform_message_id varchar(255),
    author_id uuid,
    reply_to uuid,
    CONSTRAINT ck_messages_role CHECK (role IN ('user', 'assistant', 'system'))
) {partitioning}
"""
_CLAIMS = (
    """
CREATE TABLE message_events (
    channel_type varchar(32) NOT NULL,
    platform_message_id varchar(255) NOT NULL,
    message_id uuid NOT NULL,
    message_timestamp timestamptz NOT NULL,
    CONSTRAINT pk_message_events PRIMARY KEY (channel_type, platform_message_id)
)""",
    """
CREATE TABLE message_replies (
    reply_to uuid NOT NULL,
    reply_id uuid NOT NULL,
    reply_timestamp timestamptz NOT NULL,
    CONSTRAINT pk_message_replies PRIMARY KEY (reply_to)
)""",
)
# Built once the rows are in, on the parent: Postgres builds each partition's own.
_MESSAGE_KEYS = (
    "ALTER TABLE messages ADD CONSTRAINT pk_messages PRIMARY KEY (id, timestamp)",
    "CREATE INDEX ix_messages_conversation_id_timestamp ON messages "
    "(conversation_id, timestamp DESC)",
    "CREATE INDEX ix_messages_timestamp ON messages (timestamp DESC)",
    "CREATE INDEX ix_messages_content_fts ON messages "
    "USING gin (to_tsvector('simple'::regconfig, content))",
    "CREATE INDEX ix_messages_author_id ON messages (author_id) WHERE author_id IS NOT NULL",
    "ALTER TABLE messages ADD CONSTRAINT fk_messages_conversation_id_conversations "
    "FOREIGN KEY (conversation_id) REFERENCES conversations (id) ON DELETE CASCADE",
    "ALTER TABLE messages ADD CONSTRAINT fk_messages_author_id_users "
    "FOREIGN KEY (author_id) REFERENCES users (id) ON DELETE CASCADE",
)
_CLAIM_KEYS = (
    "CREATE INDEX ix_message_events_message_timestamp_message_id "
    "ON message_events (message_timestamp, message_id)",
    "CREATE INDEX ix_message_replies_reply_timestamp_reply_id "
    "ON message_replies (reply_timestamp, reply_id)",
    "ALTER TABLE message_events ADD CONSTRAINT fk_message_events_message_id_messages "
    "FOREIGN KEY (message_id, message_timestamp) REFERENCES messages (id, timestamp) "
    "ON DELETE CASCADE ON UPDATE CASCADE",
    "ALTER TABLE message_replies ADD CONSTRAINT fk_message_replies_reply_id_messages "
    "FOREIGN KEY (reply_id, reply_timestamp) REFERENCES messages (id, timestamp) "
    "ON DELETE CASCADE ON UPDATE CASCADE",
)
# The keys of revisions 0001..0005, for the downgrade.
_PLAIN_KEYS = (
    "ALTER TABLE messages ADD CONSTRAINT pk_messages PRIMARY KEY (id)",
    "ALTER TABLE messages ADD CONSTRAINT uq_messages_channel_type_platform_message_id "
    "UNIQUE (channel_type, platform_message_id)",
    "CREATE UNIQUE INDEX uq_messages_one_reply ON messages (reply_to) WHERE reply_to IS NOT NULL",
    *_MESSAGE_KEYS[1:],
)
# One batch: the old table's rows on pages [first, last), into the new table and, for
# the upgrade, the claims they hold.
_COPY = f"""
WITH batch AS (
    SELECT {COLUMNS} FROM {{source}}
    WHERE ctid >= '(%(first)s,0)'::tid AND ctid < '(%(last)s,0)'::tid
), copied AS (
    INSERT INTO {{target}} ({COLUMNS}) SELECT {COLUMNS} FROM batch
){{claims}}
SELECT count(*) FROM batch
"""
_COPY_CLAIMS = """, events AS (
    INSERT INTO message_events (channel_type, platform_message_id, message_id, message_timestamp)
    SELECT channel_type, platform_message_id, id, timestamp FROM batch
    WHERE platform_message_id IS NOT NULL
), replies AS (
    INSERT INTO message_replies (reply_to, reply_id, reply_timestamp)
    SELECT reply_to, id, timestamp FROM batch WHERE reply_to IS NOT NULL
)"""


def upgrade() -> None:
    bind = op.get_bind()
    started = time.monotonic()
    _set_aside_plain_table(bind)
    partitioned = "PARTITION BY RANGE (timestamp)"
    bind.exec_driver_sql(_TABLE.format(name="messages", partitioning=partitioned))
    bind.exec_driver_sql("CREATE TABLE messages_default PARTITION OF messages DEFAULT")
    for month in _months_to_create(bind):
        _create_month(bind, month)
    for sql in _CLAIMS:
        bind.exec_driver_sql(sql)
    copy = _COPY.format(source="messages_unpartitioned", target="messages", claims=_COPY_CLAIMS)
    _copy_pages(bind, "messages_unpartitioned", copy)
    _build(bind, (*_MESSAGE_KEYS, *_CLAIM_KEYS))
    bind.exec_driver_sql("DROP TABLE messages_unpartitioned")
    bind.exec_driver_sql("ANALYZE messages, message_events, message_replies")
    log.info("messages partitioned by month in %.1f s", time.monotonic() - started)


def downgrade() -> None:
    bind = op.get_bind()
    started = time.monotonic()
    bind.exec_driver_sql("DROP TABLE message_events, message_replies")
    bind.exec_driver_sql("ALTER TABLE messages RENAME TO messages_partitioned")
    for index in ("pk_messages", *_index_names()):
        bind.exec_driver_sql(f"ALTER INDEX {index} RENAME TO {index}_partitioned")
    bind.exec_driver_sql(_TABLE.format(name="messages", partitioning=""))
    for partition in _partitions(bind, "messages_partitioned"):
        copy = _COPY.format(source=partition, target="messages", claims="")
        _copy_pages(bind, partition, copy)
    _build(bind, _PLAIN_KEYS)
    bind.exec_driver_sql("DROP TABLE messages_partitioned")
    bind.exec_driver_sql("ANALYZE messages")
    log.info("messages back in one table in %.1f s", time.monotonic() - started)


def _set_aside_plain_table(bind: Connection) -> None:
    """Rename the old table and free the names its new self takes (index names are
    unique in a schema); what it held is rebuilt on the new table."""
    bind.exec_driver_sql("ALTER TABLE messages RENAME TO messages_unpartitioned")
    bind.exec_driver_sql("ALTER INDEX pk_messages RENAME TO pk_messages_unpartitioned")
    bind.exec_driver_sql(
        "ALTER TABLE messages_unpartitioned "
        "DROP CONSTRAINT uq_messages_channel_type_platform_message_id"
    )
    for index in ("uq_messages_one_reply", *_index_names()):
        bind.exec_driver_sql(f"DROP INDEX {index}")


def _index_names() -> list[str]:
    return [sql.split()[2] for sql in _MESSAGE_KEYS if sql.startswith("CREATE INDEX")]


def _months_to_create(bind: Connection) -> list[datetime]:
    """Every month holding a message, and the current month and PARTITIONS_AHEAD more."""
    held = bind.exec_driver_sql(
        "SELECT DISTINCT date_trunc('month', timestamp, 'UTC') FROM messages_unpartitioned"
    ).scalars()
    now = datetime.now(UTC)
    current = datetime(now.year, now.month, 1, tzinfo=UTC)
    ahead = [_add_months(current, n) for n in range(PARTITIONS_AHEAD + 1)]
    return sorted({*(m.astimezone(UTC) for m in held), *ahead})


def _add_months(month: datetime, months: int) -> datetime:
    index = month.year * 12 + month.month - 1 + months
    return month.replace(year=index // 12, month=index % 12 + 1)


def _create_month(bind: Connection, month: datetime) -> None:
    name = f"messages_p{month:%Y_%m}"
    upper = _add_months(month, 1)
    bind.exec_driver_sql(
        f"CREATE TABLE {name} PARTITION OF messages "
        f"FOR VALUES FROM ('{month.isoformat()}') TO ('{upper.isoformat()}')"
    )


def _copy_pages(bind: Connection, table: str, copy: str) -> None:
    """Copy `table` in batches of BATCH_PAGES heap pages, with a log line per batch."""
    pages = bind.exec_driver_sql(
        f"SELECT pg_relation_size('{table}') / current_setting('block_size')::int"
    ).scalar_one()
    total = bind.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
    copied = 0
    log.info("copying %d messages of %s (%d pages)", total, table, pages)
    for first in range(0, pages, BATCH_PAGES):
        params = {"first": first, "last": first + BATCH_PAGES}
        copied += bind.exec_driver_sql(copy % params).scalar_one()
        log.info("copied %d of %d messages of %s", copied, total, table)


def _build(bind: Connection, statements: Sequence[str]) -> None:
    for sql in statements:
        began = time.monotonic()
        bind.exec_driver_sql(sql)
        log.info("built in %.1f s: %s", time.monotonic() - began, sql.split(" ON ")[0][:90])


def _partitions(bind: Connection, parent: str) -> list[str]:
    found = bind.execute(
        sa.text(
            "SELECT inhrelid::regclass::text FROM pg_inherits "
            "WHERE inhparent = CAST(:parent AS regclass) ORDER BY 1"
        ),
        {"parent": parent},
    )
    return list(found.scalars())
