"""What the schema itself enforces, whatever the code does (run-wide migrated database)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import fetch, new_user


async def one(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    """Run one statement in a transaction of its own; the first row it returns, if any."""
    async with engine.begin() as connection:
        result = await connection.execute(text(sql), params)
        return result.first() if result.returns_rows else None


async def add_user(engine: AsyncEngine, channel: str = "console") -> uuid.UUID:
    row = await one(
        engine,
        "INSERT INTO users (channel_type, channel_user_id) VALUES (:ch, :cu) RETURNING id",
        ch=channel,
        cu=new_user(),
    )
    return row.id  # type: ignore[no-any-return]


async def add_conversation(
    engine: AsyncEngine, user_id: uuid.UUID, active: bool = True, scope: str = "dm"
) -> uuid.UUID:
    row = await one(
        engine,
        """INSERT INTO conversations (user_id, channel_type, is_active, scope)
           VALUES (:u, 'console', :a, :s) RETURNING id""",
        u=user_id,
        a=active,
        s=scope,
    )
    return row.id  # type: ignore[no-any-return]


async def add_message(
    engine: AsyncEngine,
    conversation_id: uuid.UUID,
    platform_message_id: str | None = None,
    channel: str = "console",
    role: str = "user",
) -> uuid.UUID:
    row = await one(
        engine,
        """INSERT INTO messages (conversation_id, role, content, channel_type, platform_message_id)
           VALUES (:c, :r, 'hi', :ch, :p) RETURNING id""",
        c=conversation_id,
        r=role,
        ch=channel,
        p=platform_message_id,
    )
    return row.id  # type: ignore[no-any-return]


async def test_same_platform_user_twice_is_rejected(engine: AsyncEngine) -> None:
    who = new_user()
    insert = "INSERT INTO users (channel_type, channel_user_id) VALUES (:ch, :cu)"
    await one(engine, insert, ch="console", cu=who)
    await one(engine, insert, ch="telegram", cu=who)  # the same id on another platform is fine

    with pytest.raises(IntegrityError, match="uq_users_channel_type_channel_user_id"):
        await one(engine, insert, ch="console", cu=who)


async def test_at_most_one_active_conversation_per_user(engine: AsyncEngine) -> None:
    user = await add_user(engine)
    first = await add_conversation(engine, user)

    with pytest.raises(IntegrityError, match="uq_conversations_one_active_per_user"):
        await add_conversation(engine, user)

    await add_conversation(engine, user, active=False)
    await add_conversation(engine, user, active=False)
    await one(engine, "UPDATE conversations SET is_active = false WHERE id = :id", id=first)
    await add_conversation(engine, user)  # a new one once the old one is closed
    rows = await fetch(
        engine, "SELECT is_active FROM conversations WHERE user_id = :u ORDER BY 1", u=user
    )
    assert [r.is_active for r in rows] == [False, False, False, True]


async def test_at_most_one_active_conversation_per_user_and_scope(engine: AsyncEngine) -> None:
    user, chat = await add_user(engine), f"chat:{uuid.uuid4().hex}"
    await add_conversation(engine, user)  # the DM
    await add_conversation(engine, user, scope=chat)  # and one in a group: fine

    with pytest.raises(IntegrityError, match="uq_conversations_one_active_per_user_scope"):
        await add_conversation(engine, user, scope=chat)


async def test_at_most_one_active_shared_conversation_per_scope(engine: AsyncEngine) -> None:
    chat = f"chat:{uuid.uuid4().hex}"
    insert = "INSERT INTO conversations (user_id, channel_type, scope) VALUES (NULL, 'slack', :s)"
    await one(engine, insert, s=chat)
    await one(engine, insert.replace("'slack'", "'discord'"), s=chat)  # another platform

    with pytest.raises(IntegrityError, match="uq_conversations_one_active_per_shared_scope"):
        await one(engine, insert, s=chat)


async def test_erasing_a_user_erases_what_they_said_in_a_shared_conversation(
    engine: AsyncEngine,
) -> None:
    author = await add_user(engine)
    insert = (
        "INSERT INTO conversations (user_id, channel_type, scope) "
        "VALUES (NULL, 'console', :s) RETURNING id"
    )
    shared = (await one(engine, insert, s=f"chat:{uuid.uuid4().hex}")).id
    await one(
        engine,
        "INSERT INTO messages (conversation_id, role, content, channel_type, author_id) "
        "VALUES (:c, 'user', 'mine', 'console', :a), (:c, 'user', 'theirs', 'console', NULL)",
        c=shared,
        a=author,
    )

    await one(engine, "DELETE FROM users WHERE id = :id", id=author)

    left = await fetch(engine, "SELECT content FROM messages WHERE conversation_id = :c", c=shared)
    assert [row.content for row in left] == ["theirs"]  # the conversation itself stays


async def claim_event(
    engine: AsyncEngine, message: uuid.UUID, pid: str, channel: str = "console"
) -> None:
    await one(
        engine,
        """INSERT INTO message_events
               (channel_type, platform_message_id, message_id, message_timestamp)
           SELECT :ch, :p, id, timestamp FROM messages WHERE id = :m""",
        ch=channel,
        p=pid,
        m=message,
    )


async def test_platform_event_is_claimed_once_per_channel(engine: AsyncEngine) -> None:
    conversation = await add_conversation(engine, await add_user(engine))
    pid = f"evt-{uuid.uuid4().hex}"
    await claim_event(engine, await add_message(engine, conversation, pid), pid)

    with pytest.raises(IntegrityError, match="pk_message_events"):
        await claim_event(engine, await add_message(engine, conversation, pid), pid)

    other = await add_message(engine, conversation, pid, channel="slack")
    await claim_event(engine, other, pid, channel="slack")  # another platform's id space


async def test_one_reply_per_user_message(engine: AsyncEngine) -> None:
    conversation = await add_conversation(engine, await add_user(engine))
    asked = await add_message(engine, conversation)
    claim = """INSERT INTO message_replies (reply_to, reply_id, reply_timestamp)
               SELECT :to, id, timestamp FROM messages WHERE id = :r"""
    await one(engine, claim, to=asked, r=await add_message(engine, conversation, role="assistant"))

    with pytest.raises(IntegrityError, match="pk_message_replies"):
        second = await add_message(engine, conversation, role="assistant")
        await one(engine, claim, to=asked, r=second)


async def test_a_claim_needs_its_message_and_goes_with_it(engine: AsyncEngine) -> None:
    conversation = await add_conversation(engine, await add_user(engine))
    pid = f"evt-{uuid.uuid4().hex}"
    message = await add_message(engine, conversation, pid)
    await claim_event(engine, message, pid)

    with pytest.raises(IntegrityError, match="fk_message_events_message_id_messages"):
        await one(
            engine,
            """INSERT INTO message_events
                   (channel_type, platform_message_id, message_id, message_timestamp)
               VALUES ('console', :p, :m, now())""",
            p=f"evt-{uuid.uuid4().hex}",
            m=uuid.uuid4(),
        )

    await one(engine, "DELETE FROM messages WHERE id = :m", m=message)
    claims = "SELECT 1 FROM message_events WHERE platform_message_id = :p"
    assert await fetch(engine, claims, p=pid) == []


@pytest.mark.parametrize("role", ["robot", "User", ""])
async def test_role_must_be_user_assistant_or_system(engine: AsyncEngine, role: str) -> None:
    conversation = await add_conversation(engine, await add_user(engine))
    for allowed in ("user", "assistant", "system"):
        await add_message(engine, conversation, role=allowed)

    with pytest.raises(IntegrityError, match="ck_messages_role"):
        await add_message(engine, conversation, role=role)


async def test_channel_config_is_unique_per_channel(engine: AsyncEngine) -> None:
    channel = f"t-{uuid.uuid4().hex[:12]}"
    insert = "INSERT INTO channel_configs (channel_type) VALUES (:ch) RETURNING settings"
    assert (await one(engine, insert, ch=channel)).settings == {}

    with pytest.raises(IntegrityError, match="uq_channel_configs_channel_type"):
        await one(engine, insert, ch=channel)


async def test_deleting_a_user_deletes_their_conversations_and_messages(
    engine: AsyncEngine,
) -> None:
    user, other = await add_user(engine), await add_user(engine)
    conversations = [
        await add_conversation(engine, user, active=False),
        await add_conversation(engine, user),
    ]
    for conversation in conversations:
        await add_message(engine, conversation)
        await add_message(engine, conversation, role="assistant")
    kept = await add_message(engine, await add_conversation(engine, other))

    await one(engine, "DELETE FROM users WHERE id = :u", u=user)

    assert await fetch(engine, "SELECT 1 FROM conversations WHERE user_id = :u", u=user) == []
    left = await fetch(
        engine,
        "SELECT 1 FROM messages WHERE conversation_id = ANY(:c)",
        c=conversations,
    )
    assert left == []
    assert len(await fetch(engine, "SELECT 1 FROM messages WHERE id = :m", m=kept)) == 1


async def test_message_needs_an_existing_conversation(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError, match="fk_messages_conversation_id_conversations"):
        await add_message(engine, uuid.uuid4())


async def test_defaults_uuid_keys_timestamptz_and_empty_metadata(engine: AsyncEngine) -> None:
    user = await add_user(engine)
    conversation = await add_conversation(engine, user)
    message = await add_message(engine, conversation)

    for table, key in (("users", user), ("conversations", conversation), ("messages", message)):
        assert isinstance(key, uuid.UUID) and key.version == 4
        row = (await fetch(engine, f"SELECT metadata FROM {table} WHERE id = :id", id=key))[0]
        assert row.metadata == {}
    row = (await fetch(engine, "SELECT * FROM users WHERE id = :id", id=user))[0]
    assert isinstance(row.created_at, datetime) and row.created_at.utcoffset() == timedelta(0)
    assert row.updated_at == row.created_at  # both now() of the inserting transaction
    assert row.username is None and row.preferred_model is None
    row = (await fetch(engine, "SELECT * FROM conversations WHERE id = :id", id=conversation))[0]
    assert row.started_at.tzinfo is not None and row.last_activity.tzinfo is not None


async def test_column_types_and_server_defaults(engine: AsyncEngine) -> None:
    rows = await fetch(
        engine,
        """SELECT table_name, column_name, data_type, column_default
           FROM information_schema.columns
           WHERE table_schema = 'public'
             AND table_name IN ('users', 'conversations', 'messages', 'channel_configs')""",
    )
    columns = {(r.table_name, r.column_name): (r.data_type, r.column_default) for r in rows}

    for table in ("users", "conversations", "messages", "channel_configs"):
        assert columns[(table, "id")] == ("uuid", "gen_random_uuid()")
    timestamps = [
        ("users", "created_at"),
        ("users", "updated_at"),
        ("conversations", "started_at"),
        ("conversations", "last_activity"),
        ("messages", "timestamp"),
        ("channel_configs", "created_at"),
        ("channel_configs", "updated_at"),
    ]
    for column in timestamps:
        assert columns[column] == ("timestamp with time zone", "now()"), column
    for column in [(t, "metadata") for t in ("users", "conversations", "messages")] + [
        ("channel_configs", "settings")
    ]:
        assert columns[column] == ("jsonb", "'{}'::jsonb"), column
    assert columns[("conversations", "user_id")][0] == "uuid"
    assert columns[("conversations", "is_active")] == ("boolean", "true")
    assert columns[("messages", "platform_message_id")] == ("character varying", None)


async def test_foreign_keys_cascade_on_delete(engine: AsyncEngine) -> None:
    rows = await fetch(
        engine,
        """SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint
           WHERE contype = 'f' AND connamespace = 'public'::regnamespace
             AND conparentid = 0 AND NOT (SELECT relispartition FROM pg_class WHERE oid = conrelid)
           ORDER BY conname""",
    )

    assert [(r.conname, r.definition) for r in rows] == [
        (
            "fk_conversations_user_id_users",
            "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
        ),
        (
            "fk_experiment_assignments_experiment_experiments",
            "FOREIGN KEY (experiment) REFERENCES experiments(name) ON DELETE CASCADE",
        ),
        (
            "fk_experiment_assignments_user_id_users",
            "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
        ),
        (
            "fk_feedback_user_id_users",
            "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
        ),
        (
            "fk_message_events_message_id_messages",
            'FOREIGN KEY (message_id, message_timestamp) REFERENCES messages(id, "timestamp") '
            "ON UPDATE CASCADE ON DELETE CASCADE",
        ),
        (
            "fk_message_replies_reply_id_messages",
            'FOREIGN KEY (reply_id, reply_timestamp) REFERENCES messages(id, "timestamp") '
            "ON UPDATE CASCADE ON DELETE CASCADE",
        ),
        (
            "fk_messages_author_id_users",
            "FOREIGN KEY (author_id) REFERENCES users(id) ON DELETE CASCADE",
        ),
        (
            "fk_messages_conversation_id_conversations",
            "FOREIGN KEY (conversation_id) REFERENCES conversations(id) ON DELETE CASCADE",
        ),
    ]
