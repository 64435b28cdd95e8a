"""Revision 0004 (conversation scopes) on a database holding data: up keeps everything
and makes today's conversations DM conversations; down keeps every per-user
conversation and message, and says what it cannot keep."""

from __future__ import annotations

import pytest

from tests.store.conftest import NewDatabase, alembic, execute, query

SEED = """
INSERT INTO users (id, channel_type, channel_user_id) VALUES
    ('00000000-0000-0000-0000-0000000000a1', 'telegram', 'ann'),
    ('00000000-0000-0000-0000-0000000000b1', 'telegram', 'bob');
INSERT INTO conversations (id, user_id, channel_type, is_active, last_activity) VALUES
    ('00000000-0000-0000-0000-0000000000a2', '00000000-0000-0000-0000-0000000000a1',
     'telegram', true, now() - interval '1 day'),
    ('00000000-0000-0000-0000-0000000000a3', '00000000-0000-0000-0000-0000000000a1',
     'telegram', false, now() - interval '9 days'),
    ('00000000-0000-0000-0000-0000000000b2', '00000000-0000-0000-0000-0000000000b1',
     'telegram', true, now());
INSERT INTO messages (conversation_id, role, content, channel_type, platform_message_id)
SELECT c.id, r.role, 'text ' || r.role, 'telegram', NULL
FROM conversations c CROSS JOIN (VALUES ('user'), ('assistant')) AS r(role);
"""

# After the upgrade: ann talks in a group too (the newest), and the group has a shared
# conversation; ann and bob each wrote in it.
AFTER_UPGRADE = """
INSERT INTO conversations (id, user_id, channel_type, scope, last_activity) VALUES
    ('00000000-0000-0000-0000-0000000000a4', '00000000-0000-0000-0000-0000000000a1',
     'telegram', 'chat:-100', now() + interval '1 hour'),
    ('00000000-0000-0000-0000-0000000000c1', NULL, 'telegram', 'chat:-200', now());
INSERT INTO messages (conversation_id, role, content, channel_type, author_id) VALUES
    ('00000000-0000-0000-0000-0000000000a4', 'user', 'in the group', 'telegram', NULL),
    ('00000000-0000-0000-0000-0000000000c1', 'user', 'shared by ann', 'telegram',
     '00000000-0000-0000-0000-0000000000a1'),
    ('00000000-0000-0000-0000-0000000000c1', 'user', 'shared by bob', 'telegram',
     '00000000-0000-0000-0000-0000000000b1');
INSERT INTO chat_configs (channel_type, chat_id, settings)
VALUES ('telegram', '-200', '{"conversation_mode": "shared"}');
"""

CONVERSATIONS = "SELECT id::text, scope, is_active FROM conversations ORDER BY id"


async def test_upgrade_keeps_everything_and_downgrade_keeps_every_user_conversation(
    new_database: NewDatabase,
) -> None:
    url = await new_database()
    assert (await alembic(url, "upgrade", "0003"))[0] == 0
    await execute(url, SEED)

    code, out = await alembic(url, "upgrade", "0004")
    assert code == 0, out
    upgraded = [tuple(row) for row in await query(url, CONVERSATIONS)]
    assert upgraded == [
        ("00000000-0000-0000-0000-0000000000a2", "dm", True),
        ("00000000-0000-0000-0000-0000000000a3", "dm", False),
        ("00000000-0000-0000-0000-0000000000b2", "dm", True),
    ]
    assert (await query(url, "SELECT count(*) FROM messages"))[0][0] == 6

    await execute(url, AFTER_UPGRADE)
    code, out = await alembic(url, "downgrade", "0003")
    assert code == 0, out

    rows = await query(url, "SELECT id::text, is_active FROM conversations ORDER BY id")
    assert [tuple(row) for row in rows] == [
        ("00000000-0000-0000-0000-0000000000a2", True),  # ann's DM stays the active one
        ("00000000-0000-0000-0000-0000000000a3", False),
        ("00000000-0000-0000-0000-0000000000a4", False),  # her group one: kept, closed
        ("00000000-0000-0000-0000-0000000000b2", True),
    ]  # the shared conversation is gone: the old schema cannot hold it
    contents = {row[0] for row in await query(url, "SELECT content FROM messages")}
    assert "in the group" in contents and not {"shared by ann", "shared by bob"} & contents
    assert (await query(url, "SELECT count(*) FROM messages"))[0][0] == 7

    code, out = await alembic(url, "upgrade", "head")  # and up again
    assert code == 0, out
    assert len(await query(url, CONVERSATIONS)) == 4


@pytest.mark.parametrize("newest_first", [True, False])
async def test_downgrade_without_a_dm_keeps_the_newest_active(
    new_database: NewDatabase, newest_first: bool
) -> None:
    url = await new_database()
    assert (await alembic(url, "upgrade", "0004"))[0] == 0
    old, new = ("now() - interval '1 day'", "now()")
    first, second = (new, old) if newest_first else (old, new)
    await execute(
        url,
        f"""
        INSERT INTO users (id, channel_type, channel_user_id)
        VALUES ('00000000-0000-0000-0000-0000000000d1', 'slack', 'dee');
        INSERT INTO conversations (id, user_id, channel_type, scope, last_activity) VALUES
            ('00000000-0000-0000-0000-0000000000d2', '00000000-0000-0000-0000-0000000000d1',
             'slack', 'chat:C1', {first}),
            ('00000000-0000-0000-0000-0000000000d3', '00000000-0000-0000-0000-0000000000d1',
             'slack', 'chat:C2', {second});
        """,
    )

    assert (await alembic(url, "downgrade", "0003"))[0] == 0

    active = await query(url, "SELECT id::text FROM conversations WHERE is_active")
    newest = "...d2" if newest_first else "...d3"
    assert [row[0][-2:] for row in active] == [newest[-2:]]
