"""Revision 0005 (each reply knows its message) on a database holding data: up links
the replies stored so far to the user message before them, and then one reply per
user message is all the database takes; down keeps every message."""

from __future__ import annotations

import asyncpg
import pytest

from tests.store.conftest import NewDatabase, alembic, execute, query

USER, CONVERSATION = "00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000a2"
SEED = f"""
INSERT INTO users (id, channel_type, channel_user_id) VALUES ('{USER}', 'telegram', 'ann');
INSERT INTO conversations (id, user_id, channel_type)
VALUES ('{CONVERSATION}', '{USER}', 'telegram');
INSERT INTO messages (id, conversation_id, role, content, channel_type, timestamp) VALUES
    ('00000000-0000-0000-0000-000000000001', '{CONVERSATION}', 'user', 'hello', 'telegram',
     '2026-12-01 10:00:00+00'),
    ('00000000-0000-0000-0000-000000000002', '{CONVERSATION}', 'assistant', 'hi', 'telegram',
     '2026-12-01 10:00:01+00'),
    -- the responder failed: no reply to this one
    ('00000000-0000-0000-0000-000000000003', '{CONVERSATION}', 'user', 'are you there?',
     'telegram', '2026-12-01 10:01:00+00'),
    ('00000000-0000-0000-0000-000000000004', '{CONVERSATION}', 'user', 'again', 'telegram',
     '2026-12-01 10:02:00+00'),
    ('00000000-0000-0000-0000-000000000005', '{CONVERSATION}', 'assistant', 'yes', 'telegram',
     '2026-12-01 10:02:01+00');
"""
LINKS = "SELECT id::text, reply_to::text FROM messages ORDER BY timestamp"


async def test_upgrade_links_each_reply_and_the_database_takes_one_per_message(
    new_database: NewDatabase,
) -> None:
    url = await new_database()
    assert (await alembic(url, "upgrade", "0004"))[0] == 0
    await execute(url, SEED)

    code, out = await alembic(url, "upgrade", "0005")

    assert code == 0, out
    links = [tuple(row) for row in await query(url, LINKS)]
    assert links == [
        ("00000000-0000-0000-0000-000000000001", None),
        ("00000000-0000-0000-0000-000000000002", "00000000-0000-0000-0000-000000000001"),
        ("00000000-0000-0000-0000-000000000003", None),
        ("00000000-0000-0000-0000-000000000004", None),
        ("00000000-0000-0000-0000-000000000005", "00000000-0000-0000-0000-000000000004"),
    ]
    with pytest.raises(asyncpg.UniqueViolationError):
        await execute(
            url,
            f"""INSERT INTO messages (conversation_id, role, content, channel_type, reply_to)
                VALUES ('{CONVERSATION}', 'assistant', 'a second answer', 'telegram',
                        '00000000-0000-0000-0000-000000000001')""",
        )


async def test_downgrade_keeps_every_message(new_database: NewDatabase) -> None:
    url = await new_database()
    assert (await alembic(url, "upgrade", "0004"))[0] == 0
    await execute(url, SEED)
    assert (await alembic(url, "upgrade", "0005"))[0] == 0

    code, out = await alembic(url, "downgrade", "0004")

    assert code == 0, out
    assert [row[0] for row in await query(url, "SELECT count(*) FROM messages")] == [5]
    columns = await query(
        url,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'messages'",
    )
    assert "reply_to" not in {row[0] for row in columns}
