"""Alembic migrations: up, down, models never drift, and concurrent start-up under the lock.

Every test works on databases of its own, created and dropped here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.errors import MigrationError
from bot.store.engine import create_engine
from bot.store.migrate import (
    MIGRATION_LOCK_ID,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from bot.store.models import Base, is_message_partition, modelled
from tests.store.conftest import NewDatabase, alembic, execute, query

TABLES = {
    *("users", "conversations", "messages", "channel_configs", "feature_flags"),
    *("chat_configs", "message_events", "message_replies", "inbox", "blocked_users"),
    *("experiments", "experiment_assignments", "feedback", "reply_posts"),
}

# Index name -> the definition Postgres reports (after "ON public.").
EXPECTED_INDEXES = {
    "uq_users_channel_type_channel_user_id": (
        "users USING btree (channel_type, channel_user_id)",
        True,
    ),
    "ix_conversations_user_id": ("conversations USING btree (user_id)", False),
    "ix_conversations_chat": (
        "conversations USING btree (channel_type, split_part((scope)::text, ':thread:'::text, 1))",
        False,
    ),
    "ix_conversations_last_activity": ("conversations USING btree (last_activity DESC)", False),
    "ix_conversations_is_active_user_id": (
        "conversations USING btree (is_active, user_id)",
        False,
    ),
    "uq_conversations_one_active_per_user_scope": (
        "conversations USING btree (user_id, scope) WHERE is_active",
        True,
    ),
    "uq_conversations_one_active_per_shared_scope": (
        "conversations USING btree (channel_type, scope) WHERE (is_active AND (user_id IS NULL))",
        True,
    ),
    "ix_messages_author_id": (
        "messages USING btree (author_id) WHERE (author_id IS NOT NULL)",
        False,
    ),
    "uq_chat_configs_channel_type_chat_id_thread_id": (
        "chat_configs USING btree (channel_type, chat_id, thread_id)",
        True,
    ),
    "ix_messages_conversation_id_timestamp": (
        'messages USING btree (conversation_id, "timestamp" DESC)',
        False,
    ),
    "ix_messages_timestamp": ('messages USING btree ("timestamp" DESC)', False),
    # Partitioned (revision 0007): the keys unique by themselves are the claims' own.
    "pk_messages": ('messages USING btree (id, "timestamp")', True),
    "pk_message_events": ("message_events USING btree (channel_type, platform_message_id)", True),
    "pk_message_replies": ("message_replies USING btree (reply_to)", True),
    "ix_message_events_message_timestamp_message_id": (
        "message_events USING btree (message_timestamp, message_id)",
        False,
    ),
    "ix_message_replies_reply_timestamp_reply_id": (
        "message_replies USING btree (reply_timestamp, reply_id)",
        False,
    ),
    "uq_channel_configs_channel_type": ("channel_configs USING btree (channel_type)", True),
    "uq_experiments_one_running_per_scope": (
        "experiments USING btree (scope) WHERE (stopped_at IS NULL)",
        True,
    ),
    "pk_experiment_assignments": (
        "experiment_assignments USING btree (experiment, user_id)",
        True,
    ),
    # Feedback (revisions 0011, 0012): a user's latest rating of a reply; a post's reply.
    "pk_feedback": ("feedback USING btree (message_id, user_id)", True),
    "ix_feedback_user_id": ("feedback USING btree (user_id)", False),
    "pk_reply_posts": ("reply_posts USING btree (channel_type, chat_id, post_id)", True),
    "ix_reply_posts_created_at": ("reply_posts USING btree (created_at)", False),
}


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[[str], AsyncEngine]]:
    engines: list[AsyncEngine] = []

    def make(url: str) -> AsyncEngine:
        engines.append(create_engine(Settings(_env_file=None), url, pool_size=1))
        return engines[-1]

    yield make
    for engine in engines:
        await engine.dispose()


async def advisory_locks(url: str) -> list[asyncpg.Record]:
    return await query(
        url,
        """SELECT pid FROM pg_locks WHERE locktype = 'advisory'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
    )


async def tables(url: str) -> set[str]:
    rows = await query(
        url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {r["table_name"] for r in rows if not is_message_partition(r["table_name"])}


async def indexes(url: str) -> dict[str, str]:
    rows = await query(
        url, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    return {r["indexname"]: r["indexdef"] for r in rows if not is_message_partition(r["tablename"])}


async def schema_of(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Columns, constraints and indexes of the bot's tables, as Postgres reports them."""
    columns = await query(
        url,
        """SELECT table_name, column_name, data_type, character_maximum_length,
                  is_nullable, column_default
           FROM information_schema.columns
           WHERE table_schema = 'public' AND table_name <> 'alembic_version'""",
    )
    constraints = await query(
        url,
        """SELECT conrelid::regclass::text AS tbl, conname, contype::text,
                  pg_get_constraintdef(oid) AS def
           FROM pg_constraint
           WHERE connamespace = 'public'::regnamespace AND conparentid = 0
             AND NOT (SELECT relispartition FROM pg_class WHERE oid = conrelid)
             AND conrelid::regclass::text <> 'alembic_version'""",
    )
    return {
        "columns": {tuple(r) for r in columns if not is_message_partition(r[0])},
        "constraints": {tuple(r) for r in constraints},
        "indexes": {
            item for item in (await indexes(url)).items() if item[0] != "alembic_version_pkc"
        },
    }


def diff_against_models(connection: Connection) -> list[Any]:
    """What `alembic check` computes: the operations that would make the database match."""
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "compare_server_default": True, "include_object": modelled},
    )
    return list(compare_metadata(context, Base.metadata))


async def test_upgrade_builds_the_schema_and_downgrade_removes_it(
    new_database: NewDatabase,
) -> None:
    url = await new_database()

    code, out = await alembic(url, "upgrade", "head")
    assert code == 0, out
    assert await tables(url) == TABLES | {"alembic_version"}
    found = await indexes(url)
    for name, (definition, unique) in EXPECTED_INDEXES.items():
        kind = "CREATE UNIQUE INDEX" if unique else "CREATE INDEX"
        only = "ONLY " if definition.startswith("messages ") else ""  # a partitioned index
        assert found.get(name) == f"{kind} {name} ON {only}public.{definition}"

    code, out = await alembic(url, "current")
    assert code == 0 and f"{head_revision()} (head)" in out, out

    code, out = await alembic(url, "downgrade", "base")
    assert code == 0, out
    assert await tables(url) == {"alembic_version"}
    assert set(await indexes(url)) == {"alembic_version_pkc"}
    assert await query(url, "SELECT * FROM alembic_version") == []

    code, out = await alembic(url, "upgrade", "head")  # and back up again
    assert code == 0, out
    assert await tables(url) == TABLES | {"alembic_version"}


async def test_alembic_check_agrees_and_fails_on_drift(
    new_database: NewDatabase, make_engine: Callable[[str], AsyncEngine]
) -> None:
    url = await new_database()
    engine = make_engine(url)
    await upgrade_to_head(engine)

    code, out = await alembic(url, "check")
    assert code == 0, out
    assert "No new upgrade operations detected" in out
    async with engine.connect() as connection:
        assert await connection.run_sync(diff_against_models) == []

    # Now make the database drift from the models; the comparison must notice.
    async with engine.begin() as connection:
        await connection.exec_driver_sql("DROP INDEX ix_messages_timestamp")
        await connection.exec_driver_sql("DROP INDEX uq_conversations_one_active_per_user_scope")
        await connection.exec_driver_sql("ALTER TABLE users ADD COLUMN nickname text")
    async with engine.connect() as connection:
        diff = await connection.run_sync(diff_against_models)
    found = {(op[0], op[1].name) for op in diff if op[0] == "add_index"}
    assert found == {
        ("add_index", "ix_messages_timestamp"),
        ("add_index", "uq_conversations_one_active_per_user_scope"),
    }
    assert any(op[0] == "remove_column" and op[3].name == "nickname" for op in diff)

    code, out = await alembic(url, "check")
    assert code != 0
    assert "New upgrade operations detected" in out and "ix_messages_timestamp" in out


async def test_models_and_migrations_build_the_same_schema(
    new_database: NewDatabase, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """Beyond `alembic check`: names of check constraints, partial-index predicates, defaults."""
    migrated, created = await new_database(), await new_database()
    await upgrade_to_head(make_engine(migrated))
    async with make_engine(created).begin() as connection:
        await connection.run_sync(Base.metadata.create_all)

    from_migrations, from_models = await schema_of(migrated), await schema_of(created)

    for part in ("columns", "constraints", "indexes"):
        assert from_migrations[part] == from_models[part], part
    checks = {c[1] for c in from_migrations["constraints"] if c[2] == "c"}
    assert checks == {"ck_messages_role", "ck_feedback_rating"}


async def test_upgrade_to_head_from_four_engines_at_once(
    new_database: NewDatabase,
    make_engine: Callable[[str], AsyncEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = await new_database()
    engines = [make_engine(url) for _ in range(4)]

    with caplog.at_level(logging.INFO, logger="bot.store.migrate"):
        revisions = await asyncio.gather(*(upgrade_to_head(e) for e in engines))

    head = head_revision()
    assert head is not None
    assert revisions == [head] * 4
    migrated = [r for r in caplog.records if r.getMessage().startswith("database migrated")]
    assert [r.getMessage() for r in migrated] == [f"database migrated from empty to {head}"]
    assert await current_revision(engines[0]) == head
    assert await tables(url) == TABLES | {"alembic_version"}
    # The lock was released: a later start-up is not blocked and has nothing to do.
    assert await asyncio.wait_for(upgrade_to_head(engines[1]), timeout=10) == head
    assert await advisory_locks(url) == []


async def test_unreachable_database_is_a_migration_error_without_the_password(
    make_engine: Callable[[str], AsyncEngine],
) -> None:
    engine = make_engine("postgresql://postgres:hunter2pw@127.0.0.1:1/x")

    with pytest.raises(MigrationError) as caught:
        await upgrade_to_head(engine)

    assert str(caught.value).startswith("migration failed:")
    assert "hunter2pw" not in str(caught.value)


async def test_unknown_revision_in_the_database_is_a_migration_error(
    new_database: NewDatabase, make_engine: Callable[[str], AsyncEngine]
) -> None:
    url = await new_database()
    await execute(
        url,
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);"
        "INSERT INTO alembic_version VALUES ('9999_from_the_future')",
    )
    engine = make_engine(url)

    with pytest.raises(MigrationError, match="9999_from_the_future"):
        await upgrade_to_head(engine)

    assert await advisory_locks(url) == []


async def test_failed_migration_names_the_cause_and_releases_the_lock(
    new_database: NewDatabase, make_engine: Callable[[str], AsyncEngine]
) -> None:
    url = await new_database()
    await execute(url, "CREATE TABLE users (squatter int)")
    engine = make_engine(url)

    with pytest.raises(MigrationError, match='relation "users" already exists'):
        await upgrade_to_head(engine)

    assert await advisory_locks(url) == []
    assert await current_revision(engine) is None  # nothing half-applied
    assert await tables(url) == {"users"}
    # Once the obstacle is gone the same engine migrates, not blocked by a kept lock.
    await execute(url, "DROP TABLE users")
    assert await asyncio.wait_for(upgrade_to_head(engine), timeout=10) == head_revision()


async def hold_migration_lock(url: str) -> asyncpg.Connection:
    """Another process's migration in progress: a connection holding the advisory lock."""
    connection = await asyncpg.connect(url)
    await connection.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})")
    return connection


async def test_upgrade_waits_out_a_migration_longer_than_the_command_timeout(
    new_database: NewDatabase,
) -> None:
    url = await new_database()
    settings = Settings(_env_file=None, db_command_timeout_seconds=0.3)
    engine = create_engine(settings, url, pool_size=1)
    holder = await hold_migration_lock(url)
    try:
        upgrade = asyncio.create_task(upgrade_to_head(engine, lock_wait=30))
        # Several command timeouts pass while the other migration holds the lock.
        await asyncio.sleep(1.5)
        assert not upgrade.done(), upgrade
        assert await tables(url) == set()
        await holder.close()  # the other migration ends: its session's lock goes with it
        assert await asyncio.wait_for(upgrade, timeout=30) == head_revision()
    finally:
        await holder.close()
        await engine.dispose()
    assert await tables(url) == TABLES | {"alembic_version"}
    assert await advisory_locks(url) == []


async def test_upgrade_gives_up_on_a_lock_held_past_the_deadline(
    new_database: NewDatabase, make_engine: Callable[[str], AsyncEngine]
) -> None:
    url = await new_database()
    holder = await hold_migration_lock(url)
    try:
        with pytest.raises(MigrationError, match="MIGRATION_LOCK_WAIT_SECONDS"):
            await upgrade_to_head(make_engine(url), lock_wait=0.5)
    finally:
        await holder.close()
    assert await tables(url) == set()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, "alembic: DATABASE_URL is not set; alembic needs it (or use `bot migrate`)"),
        (
            "mysql://u:hunter2pw@127.0.0.1/db",
            "alembic: invalid setting DATABASE_URL: must start with postgresql://",
        ),
        (
            "postgresql://postgres:hunter2pw@127.0.0.1:1/x",
            "alembic: failed on postgresql+asyncpg://postgres:***@127.0.0.1:1/x: ",
        ),
    ],
)
async def test_alembic_without_a_usable_database_says_so_in_one_line(
    url: str | None, expected: str
) -> None:
    code, out = await alembic(url, "current")

    assert code != 0
    assert out.startswith(expected) and out.count("\n") == 1, out
    assert "hunter2pw" not in out and "Traceback" not in out
