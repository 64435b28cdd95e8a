"""`bot ops backup` and `bot ops restore` with the real pg_dump and pg_restore: a
database with conversations in it goes to one file and back into an empty database,
checked table by table; there the conversation goes on, with Redis flushed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bot.store.migrate import head_revision
from tests.conftest import create_database, create_migrated_database, drop_database
from tests.ops.conftest import Ops
from tests.support import ServiceFactory, echo, handled, msg, new_user

NewDatabase = Callable[[bool], Awaitable[str]]


@pytest.fixture
async def databases(server_urls: tuple[str, str]) -> AsyncIterator[NewDatabase]:
    """Databases of the test's own, migrated or empty; dropped after."""
    admin_url, names = server_urls[0], list[str]()

    async def new(migrated: bool) -> str:
        names.append(f"bot_backup_{uuid.uuid4().hex[:10]}")
        make = create_migrated_database if migrated else create_database
        return await make(admin_url, names[-1])

    yield new
    for name in names:
        await drop_database(admin_url, name)


async def test_a_backup_restores_into_an_empty_database_where_the_conversation_goes_on(
    ops: Ops, databases: NewDatabase, make_service: ServiceFactory, tmp_path: Path
) -> None:
    source, target, file = await databases(True), await databases(False), tmp_path / "b.dump"
    user = new_user()
    before = await make_service(database_url=source)
    for text in ("one", "two"):
        await handled(before, msg(user, text, f"{user}-{text}"))

    saved = (await ops("backup", "--output", str(file), "--json", DATABASE_URL=source)).data
    restored = (await ops("restore", str(file), "--json", DATABASE_URL=target)).data

    assert saved["bytes"] == file.stat().st_size > 0
    assert saved["rows"]["messages"] == 4 and saved["revision"] == head_revision()
    assert restored["rows"] == saved["rows"]  # every table, row for row
    assert restored["revision"] == restored["head"] == head_revision()
    assert "warnings" not in restored
    after = await make_service(database_url=target, redis_key_prefix=f"t:{uuid.uuid4().hex}:")
    reply = await handled(after, msg(user, "three", f"{user}-three"))  # an empty Redis
    assert reply.text == echo("three", 4)  # the conversation restored, and continued
    again = await ops("restore", str(file), DATABASE_URL=target)
    assert again.code == 2 and "empty database" in again.err  # it holds tables now


async def test_a_restore_needs_a_backup_file(ops: Ops, tmp_path: Path) -> None:
    missing = await ops("restore", str(tmp_path / "none.dump"))
    into_a_directory = await ops("backup", "--output", str(tmp_path))

    assert missing.code == 1 and "no backup file" in missing.err
    assert into_a_directory.code == 2 and "is a directory" in into_a_directory.err
