"""DATABASE_READ_URL: the reads of `bot ops` (stats, conversation search and show, user
export) go to a streaming replica, never the message path; `bot ops health` shows the
replica and its replay lag, and warns above REPLICA_LAG_WARNING_SECONDS.

The replica is real (tests/pg_servers.py): its replay is paused, so that what the
primary stores after that is visible to ops only once the replica has replayed it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from bot.config import Settings
from bot.domain import ReplyKind
from bot.runtime import Schema, open_runtime
from tests.conftest import create_migrated_database
from tests.ops.conftest import Ops
from tests.pg_servers import (
    PgServer,
    pause_replay,
    primary_and_replica,
    resume_replay,
    wait_caught_up,
)
from tests.support import ServiceFactory, free_port, handled, msg, new_user

pytestmark = pytest.mark.timeout(90)
DATABASE = "bot_read_replica"


@pytest.fixture
async def servers() -> AsyncIterator[tuple[PgServer, PgServer]]:
    async with primary_and_replica(synchronous=False) as (primary, replica):
        await create_migrated_database(primary.url(), DATABASE)
        await wait_caught_up(primary, replica)
        yield primary, replica


def word() -> str:
    return f"w{uuid.uuid4().hex[:12]}"


async def test_ops_reads_see_the_replica_and_health_shows_its_lag(
    servers: tuple[PgServer, PgServer], make_service: ServiceFactory, ops: Ops
) -> None:
    primary, replica = servers
    service = await make_service(database_url=primary.url(DATABASE))
    user, old, new = new_user(), word(), word()
    first = await handled(service, msg(user, f"before {old}", pid=f"{user}:1"))
    await wait_caught_up(primary, replica)
    await pause_replay(replica)
    try:
        await handled(service, msg(user, f"after {new}", pid=f"{user}:2"))
        on_primary = {"DATABASE_URL": primary.url(DATABASE)}
        env = {**on_primary, "DATABASE_READ_URL": replica.url(DATABASE)}
        lagging = {**env, "REPLICA_LAG_WARNING_SECONDS": "0.01"}

        found_old = (await ops("conversation", "search", old, "--json", **env)).data
        found_new = (await ops("conversation", "search", new, "--json", **env)).data
        shown = await ops("conversation", "show", str(first.conversation_id), "--json", **env)
        exported = (await ops("user", "export", "console", user, **env)).data
        stats = (await ops("stats", "--json", **env)).data
        health = (await ops("health", "--json", **lagging)).data
        table = await ops("health", **lagging)
    finally:
        await resume_replay(replica)
    primary_only = (await ops("conversation", "search", new, "--json", **on_primary)).data

    # What the primary stored after the pause is not on the replica, where ops read it.
    assert len(found_old["results"]) == 2 and found_new["results"] == []  # message, echo
    shown_roles = [(m["role"], m["content"]) for m in shown.data["messages"]]
    assert shown_roles[0] == ("user", f"before {old}") and len(shown_roles) == 2
    messages = exported["scopes"][0]["conversations"][0]["messages"]
    assert [m["content"] for m in messages][0::2] == [f"before {old}"]
    assert [(c["channel"], c["last_24h"]) for c in stats["messages"]["by_channel"]] == [
        ("console", 2)
    ]
    assert {t["table"] for t in stats["postgres"]["tables"]} >= {"messages", "users"}
    # Unset, they read DATABASE_URL, as before.
    assert len(primary_only["results"]) == 2

    read = health["replica"]
    assert health["ok"] is True and read["ok"] is True and read["in_recovery"] is True
    assert read["lag_bytes"] > 0 and read["lag_seconds"] > 0
    assert f":{replica.port}/" in read["url"]
    assert any("read replica is" in w and "behind" in w for w in health["warnings"])
    assert table.code == 0 and "Read replica" in table.out and "replay lag" in table.out

    await wait_caught_up(primary, replica)
    caught_up = (await ops("health", "--json", **env)).data
    found_now = (await ops("conversation", "search", new, "--json", **env)).data
    assert caught_up["replica"]["lag_bytes"] == 0 and caught_up["replica"]["lag_seconds"] == 0
    assert not any("read replica" in w for w in caught_up["warnings"])
    assert len(found_now["results"]) == 2


async def test_health_warns_when_the_read_url_names_no_standby(
    servers: tuple[PgServer, PgServer], ops: Ops
) -> None:
    primary, _ = servers
    url = primary.url(DATABASE)
    data = (await ops("health", "--json", DATABASE_URL=url, DATABASE_READ_URL=url)).data

    assert data["replica"]["ok"] is True and data["replica"]["in_recovery"] is False
    assert data["replica"]["lag_bytes"] is None
    assert any("not in recovery" in warning for warning in data["warnings"])


class Listener:
    """A TCP port that counts the connections made to it and closes each at once."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/replica"

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


async def test_the_message_path_never_reads_the_replica(
    make_settings: Callable[..., Settings], ops: Ops
) -> None:
    async with Listener() as replica:
        settings = make_settings(database_read_url=replica.url)
        async with open_runtime(settings, schema=Schema.LEAVE) as runtime:
            user = new_user()
            replies = [await handled(runtime.service, msg(user, f"hello {n}")) for n in range(3)]
        untouched = replica.accepted
        search = await ops("conversation", "search", "hello", DATABASE_READ_URL=replica.url)

    assert [reply.kind for reply in replies] == [ReplyKind.ANSWER] * 3
    assert untouched == 0
    assert search.code == 1 and replica.accepted > 0  # the ops read went there
