"""Revision 0006 (the turn's fence) on a database holding data: up gives each active
conversation its newest message (a user message first on a tie, as the context is
read) and leaves closed ones without; down drops both columns and keeps every row."""

from __future__ import annotations

from tests.store.conftest import NewDatabase, alembic, execute, query

USER = "00000000-0000-0000-0000-0000000000b1"
ACTIVE, CLOSED, EMPTY = (f"00000000-0000-0000-0000-0000000000c{n}" for n in (1, 2, 3))
SEED = f"""
INSERT INTO users (id, channel_type, channel_user_id) VALUES ('{USER}', 'slack', 'bo');
INSERT INTO conversations (id, user_id, channel_type, scope, is_active) VALUES
    ('{ACTIVE}', '{USER}', 'slack', 'dm', true),
    ('{CLOSED}', '{USER}', 'slack', 'dm', false),
    ('{EMPTY}', '{USER}', 'slack', 'chat:C1', true);
INSERT INTO messages (id, conversation_id, role, content, channel_type, timestamp) VALUES
    ('00000000-0000-0000-0000-000000000011', '{ACTIVE}', 'user', 'hi', 'slack',
     '2026-12-01 10:00:00+00'),
    ('00000000-0000-0000-0000-000000000012', '{ACTIVE}', 'assistant', 'hello', 'slack',
     '2026-12-01 10:00:01+00'),
    -- a user message at the very time of the reply: read as the newer of the two
    ('00000000-0000-0000-0000-000000000013', '{ACTIVE}', 'user', 'and?', 'slack',
     '2026-12-01 10:00:01+00'),
    ('00000000-0000-0000-0000-000000000021', '{CLOSED}', 'user', 'old', 'slack',
     '2026-11-01 10:00:00+00');
"""
FENCES = "SELECT id::text, last_message_id::text, reply_due FROM conversations ORDER BY id"


async def test_upgrade_gives_each_active_conversation_its_newest_message(
    new_database: NewDatabase,
) -> None:
    url = await new_database()
    assert (await alembic(url, "upgrade", "0005"))[0] == 0
    await execute(url, SEED)

    code, out = await alembic(url, "upgrade", "0006")

    assert code == 0, out
    assert [tuple(row) for row in await query(url, FENCES)] == [
        (ACTIVE, "00000000-0000-0000-0000-000000000013", None),
        (CLOSED, None, None),
        (EMPTY, None, None),
    ]


async def test_downgrade_drops_the_fence_and_keeps_every_row(new_database: NewDatabase) -> None:
    url = await new_database()
    assert (await alembic(url, "upgrade", "0005"))[0] == 0
    await execute(url, SEED)
    assert (await alembic(url, "upgrade", "0006"))[0] == 0

    code, out = await alembic(url, "downgrade", "0005")

    assert code == 0, out
    assert [row[0] for row in await query(url, "SELECT count(*) FROM messages")] == [4]
    columns = await query(
        url,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'conversations'",
    )
    assert {"last_message_id", "reply_due"}.isdisjoint(row[0] for row in columns)
