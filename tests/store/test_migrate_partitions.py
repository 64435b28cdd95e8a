"""Revision 0007 (monthly partitions of messages) on a database holding data: up moves
every row into its month's partition, the claims of platform events and replies come
from the rows, the progress is logged batch by batch; down brings back one table with
the unique keys of before, every row kept. On a million rows, within a minute."""

from __future__ import annotations

import time

from tests.store.conftest import NewDatabase, alembic, execute, query

USER = "00000000-0000-0000-0000-0000000000b1"
CONVERSATION = "00000000-0000-0000-0000-0000000000c1"
ROWS = 1_000_000

# Rows over three months (two in 2026 and one long ago), every other one a user message
# with a platform event and every other one its reply.
SEED = f"""
INSERT INTO users (id, channel_type, channel_user_id) VALUES ('{USER}', 'slack', 'bo');
INSERT INTO conversations (id, user_id, channel_type, scope, is_active)
VALUES ('{CONVERSATION}', '{USER}', 'slack', 'dm', true);
INSERT INTO messages (id, conversation_id, role, content, channel_type, timestamp,
                      platform_message_id, reply_to)
SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(n), 12, '0'))::uuid, '{CONVERSATION}',
       CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END,
       'message ' || n, 'slack',
       CASE n % 3 WHEN 0 THEN timestamptz '2026-10-31 23:59:59.5+00'
                  WHEN 1 THEN timestamptz '2026-11-01 00:00:00+00'
                  ELSE timestamptz '2019-02-14 12:00:00+00' END + n * interval '1 microsecond',
       CASE WHEN n % 2 = 1 THEN 'evt-' || n END,
       CASE WHEN n % 2 = 0
            THEN ('00000000-0000-0000-0000-' || lpad(to_hex(n - 1), 12, '0'))::uuid END
FROM generate_series(1, {{rows}}) AS n;
"""
PER_PARTITION = """
SELECT tableoid::regclass::text AS partition, count(*) AS n FROM messages
GROUP BY 1 ORDER BY 1
"""
COUNTS = """
SELECT (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM messages WHERE platform_message_id IS NOT NULL) AS with_event,
       (SELECT count(*) FROM messages WHERE reply_to IS NOT NULL) AS replies
"""
CLAIMS = """
SELECT (SELECT count(*) FROM message_events e JOIN messages m
          ON m.id = e.message_id AND m.timestamp = e.message_timestamp
          AND m.platform_message_id = e.platform_message_id) AS events,
       (SELECT count(*) FROM message_replies r JOIN messages m
          ON m.id = r.reply_id AND m.timestamp = r.reply_timestamp
          AND m.reply_to = r.reply_to) AS replies
"""


async def migrated_with(new_database: NewDatabase, rows: int) -> str:
    url = await new_database()
    assert (await alembic(url, "upgrade", "0006"))[0] == 0
    await execute(url, SEED.format(rows=rows))
    return url


async def test_upgrade_puts_each_row_in_its_month_with_its_claims(
    new_database: NewDatabase,
) -> None:
    url = await migrated_with(new_database, 300)

    code, out = await alembic(url, "upgrade", "0007")

    assert code == 0, out
    found = {row["partition"]: row["n"] for row in await query(url, PER_PARTITION)}
    assert found == {"messages_p2019_02": 100, "messages_p2026_10": 100, "messages_p2026_11": 100}
    assert tuple((await query(url, CLAIMS))[0]) == (150, 150)
    assert "copied 300 of 300 messages of messages_unpartitioned" in out
    assert "messages partitioned by month" in out


async def test_a_million_rows_up_and_down_in_batches_every_row_kept(
    new_database: NewDatabase,
) -> None:
    url = await migrated_with(new_database, ROWS)
    before = tuple((await query(url, COUNTS))[0])

    started = time.monotonic()
    code, out = await alembic(url, "upgrade", "0007")
    upgraded = time.monotonic() - started

    assert code == 0, out
    assert tuple((await query(url, COUNTS))[0]) == before == (ROWS, ROWS // 2, ROWS // 2)
    assert tuple((await query(url, CLAIMS))[0]) == (ROWS // 2, ROWS // 2)
    batches = [line for line in out.splitlines() if "copied " in line]
    assert len(batches) >= 10 and batches[-1].endswith(f"copied {ROWS} of {ROWS} messages "
                                                       "of messages_unpartitioned")  # fmt: skip

    started = time.monotonic()
    code, out = await alembic(url, "downgrade", "0006")
    downgraded = time.monotonic() - started

    assert code == 0, out
    assert tuple((await query(url, COUNTS))[0]) == before
    keys = await query(
        url,
        "SELECT indexname FROM pg_indexes WHERE tablename = 'messages' AND indexdef LIKE "
        "'CREATE UNIQUE%' ORDER BY 1",
    )
    assert [row[0] for row in keys] == [
        "pk_messages",
        "uq_messages_channel_type_platform_message_id",
        "uq_messages_one_reply",
    ]
    print(f"\n{ROWS} rows: upgrade {upgraded:.1f} s, downgrade {downgraded:.1f} s")
