"""`bot ops user show|export|delete`: one user in both stores."""

from __future__ import annotations

import io
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.config import Settings
from bot.domain import ChatKind, IncomingMessage
from tests.ops.conftest import Ops, chat, keys_of
from tests.support import ServiceFactory, fetch, msg, new_user

pytestmark = pytest.mark.timeout(15)


async def test_user_show_has_the_row_the_cached_session_and_conversations(
    ops: Ops, make_service: ServiceFactory, settings: Settings, keys: Keys
) -> None:
    channel, user = "console", new_user()
    await chat(make_service, channel, user, "first", "second", "/reset", "third")

    data = (await ops("user", "show", channel, user, "--json")).data

    assert data["user"]["channel_user_id"] == user and data["user"]["username"] == user
    session = data["cache"]["session"]
    assert session["key"] == keys.session(channel, user)
    assert 0 < session["ttl_seconds"] <= settings.session_ttl_seconds
    active, closed = data["conversations"]  # newest first
    assert (active["is_active"], active["messages"]) == (True, 2)
    assert (closed["is_active"], closed["messages"]) == (False, 4)
    assert session["fields"]["conversation_id"] == active["id"]
    assert data["cache"]["rate"]["count"] >= 1


async def test_piped_tables_keep_each_id_on_one_line(
    ops: Ops, make_service: ServiceFactory
) -> None:
    channel, user = "console", new_user()
    await chat(make_service, channel, user, "first", "/reset", "second")
    ids = [
        c["id"] for c in (await ops("user", "show", channel, user, "--json")).data["conversations"]
    ]

    piped = await ops("user", "show", channel, user)  # no COLUMNS, not a terminal: wide
    narrow = await ops("user", "show", channel, user, COLUMNS="80")  # as asked

    def rows(output: str) -> set[str]:
        """The conversation ids that begin a table row whole."""
        return {i for i in ids for line in output.splitlines() if line.startswith(f"│ {i} ")}

    assert piped.code == 0 and narrow.code == 0
    assert rows(piped.out) == set(ids), piped.out
    assert rows(narrow.out) == set(), narrow.out  # folded, as COLUMNS asks


async def test_user_show_of_an_unknown_user_exits_1(ops: Ops) -> None:
    result = await ops("user", "show", "console", new_user(), "--json")

    assert result.code == 1
    assert "no user" in result.err
    assert result.json() == {"error": result.err.strip().removeprefix("bot ops: "), "exit_code": 1}


async def test_user_export_holds_every_message_and_the_cache(
    ops: Ops, make_service: ServiceFactory, tmp_path: Path
) -> None:
    channel, user = "console", new_user()
    await chat(make_service, channel, user, "alpha one", "/reset", "beta two")
    target = tmp_path / "export.json"

    written = (await ops("user", "export", channel, user, "--output", str(target), "--json")).data

    assert written == {
        "output": str(target),
        "user": written["user"],
        "scopes": 1,
        "conversations": 2,
        "messages": 4,
    }
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    document = json.loads(target.read_text())
    (dm,) = document["scopes"]
    contents = [m["content"] for c in dm["conversations"] for m in c["messages"]]
    assert "alpha one" in contents and "beta two" in contents and len(contents) == 4
    assert document["user"]["channel_user_id"] == user
    assert document["redis"]["session"]["fields"]["user_id"] == document["user"]["id"]
    cached = [item["content"] for items in document["redis"]["contexts"].values() for item in items]
    assert "beta two" in cached
    to_stdout = await ops("user", "export", channel, user)
    assert json.loads(to_stdout.out)["user"] == document["user"]


async def test_user_export_to_a_path_that_cannot_be_written_says_so(
    ops: Ops, make_service: ServiceFactory, tmp_path: Path
) -> None:
    channel, user = "console", new_user()
    await chat(make_service, channel, user, "hello")
    target = tmp_path / "missing" / "export.json"

    result = await ops("user", "export", channel, user, "-o", str(target))

    assert result.code == 2, result
    assert f"cannot write {target}: No such file or directory" in result.err
    assert "unavailable" not in result.err and not target.parent.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["user", "show", "console", "bad\udcffbyte"],  # a byte that is not UTF-8, as argv has it
        ["user", "export", "console", "nul\x00byte"],
        ["conversation", "search", "caf\udce9"],
    ],
)
async def test_arguments_that_are_not_text_are_bad_input(ops: Ops, argv: list[str]) -> None:
    result = await ops(*argv, "--json")

    assert result.code == 2, result
    assert "not valid UTF-8" in result.err or "NUL" in result.err
    assert "unavailable" not in result.err and result.json()["exit_code"] == 2


async def _user_rows(engine: AsyncEngine, channel: str, user: str) -> dict[str, int]:
    rows = await fetch(
        engine,
        """SELECT (SELECT count(*) FROM users WHERE channel_type = :c AND channel_user_id = :u),
                  (SELECT count(*) FROM conversations c JOIN users u ON u.id = c.user_id
                   WHERE u.channel_type = :c AND u.channel_user_id = :u)""",
        c=channel,
        u=user,
    )
    return {"users": rows[0][0], "conversations": rows[0][1]}


async def test_user_delete_erases_the_user_from_both_stores(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine, redis: Redis, keys: Keys
) -> None:
    channel, gone, kept = "console", new_user(), new_user()
    service = await make_service()
    for text, pid in (("one", "p1"), ("/reset", "p2"), ("two", "p3")):
        await service.handle(msg(gone, text, pid=f"{gone}-{pid}", channel=channel))
    await chat(make_service, channel, kept, "stay")
    # Each wrote once more, kept in the inbox and not answered yet.
    for user in (gone, kept):
        assert (await service.receive(msg(user, "later", pid=f"{user}-p9"))).taken
    shown = (await ops("user", "show", channel, gone, "--json")).data
    conversations = [uuid.UUID(c["id"]) for c in shown["conversations"]]
    user_id = uuid.UUID(shown["user"]["id"])

    data = (await ops("user", "delete", channel, gone, "--yes", "--json")).data

    assert data["postgres"] == {"users": 1, "conversations": 2, "messages": 4}
    assert data["redis"]["session"] == 1 and data["redis"]["active"] == 1
    assert await _user_rows(engine, channel, gone) == {"users": 0, "conversations": 0}
    assert (
        await fetch(
            engine,
            "SELECT 1 FROM messages WHERE conversation_id = ANY(:ids)",
            ids=conversations,
        )
        == []
    )
    left = await keys_of(redis, keys)
    about = {keys.session(channel, gone), keys.rate(user_id)}
    about |= {keys.context(c) for c in conversations}
    assert not (left & about)
    assert not any(gone in key for key in left if not key.startswith(keys.dedup(channel, "")))
    assert await redis.zscore(keys.active(channel), gone) is None
    assert await redis.exists(keys.dedup(channel, f"{gone}-p1"))  # kept: no personal data
    # The other user is untouched.
    assert await _user_rows(engine, channel, kept) == {"users": 1, "conversations": 1}
    pending = await fetch(engine, "SELECT message->>'channel_user_id' AS who FROM inbox")
    assert [row.who for row in pending] == [kept]  # the deleted user's is gone with them
    assert keys.session(channel, kept) in left
    assert await redis.zscore(keys.active(channel), kept) is not None
    again = await ops("user", "delete", channel, gone, "--yes")
    assert again.code == 1 and "no user" in again.err


def said(user: str, text: str, chat: str | None = None, thread: str | None = None) -> Any:
    """A Slack message: a DM, in a channel (each member's own), or in a thread (shared)."""
    kind = ChatKind.THREAD if thread else ChatKind.GROUP if chat else ChatKind.PRIVATE
    return IncomingMessage(
        "slack", user, text, username=user, platform_message_id=uuid.uuid4().hex,
        chat_id=chat, thread_id=thread, chat_kind=kind,
    )  # fmt: skip


async def test_a_user_in_a_dm_a_channel_and_a_shared_thread_is_shown_exported_and_erased(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine, redis: Redis, keys: Keys
) -> None:
    service = await make_service()
    alice, bob = new_user(), new_user()
    chat, thread = f"C{uuid.uuid4().hex[:8]}", f"{uuid.uuid4().int % 10**6}.000100"
    await service.handle(said(alice, "alice in her dm"))
    await service.handle(said(alice, "alice in the channel", chat))
    await service.handle(said(alice, "alice in the thread", chat, thread))
    await service.handle(said(bob, "bob in the thread", chat, thread))

    shown = (await ops("user", "show", "slack", alice, "--json")).data
    exported = json.loads((await ops("user", "export", "slack", alice)).out)
    erased = (await ops("user", "delete", "slack", alice, "--yes", "--json")).data

    thread_scope = f"chat:{chat}:thread:{thread}"
    scopes = {c["scope"]: (c["shared"], c["messages"]) for c in shown["conversations"]}
    assert scopes == {"dm": (False, 2), f"chat:{chat}": (False, 2), thread_scope: (True, 1)}
    by_scope = {
        s["scope"]: [m["content"] for c in s["conversations"] for m in c["messages"]]
        for s in exported["scopes"]
    }
    assert by_scope[thread_scope] == ["alice in the thread"]  # not bob's, nor the replies
    assert "alice in her dm" in by_scope["dm"]
    assert "alice in the channel" in by_scope[f"chat:{chat}"]
    assert erased["postgres"] == {"users": 1, "conversations": 2, "messages": 5}
    left = await fetch(
        engine,
        """SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id
           WHERE c.scope = :scope AND c.channel_type = 'slack' AND m.role = 'user'""",
        scope=thread_scope,
    )
    assert [row.content for row in left] == ["bob in the thread"]
    shared_id = next(c["id"] for c in shown["conversations"] if c["shared"])
    assert not await redis.exists(keys.context(uuid.UUID(shared_id)))  # rebuilt without her


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_user_delete_asks_first_and_refuses_without_a_terminal(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel, user = "console", new_user()
    await chat(make_service, channel, user, "hello")

    refused = await ops("user", "delete", channel, user)  # pytest's stdin is no terminal
    assert refused.code == 2 and "--yes" in refused.err
    monkeypatch.setattr("sys.stdin", FakeTerminal("no\n"))
    declined = await ops("user", "delete", channel, user)
    assert declined.code == 1 and "Delete user" in declined.err
    assert await _user_rows(engine, channel, user) == {"users": 1, "conversations": 1}

    monkeypatch.setattr("sys.stdin", FakeTerminal("yes\n"))
    confirmed = await ops("user", "delete", channel, user)
    assert confirmed.code == 0 and "Deleted user" in confirmed.out
    assert await _user_rows(engine, channel, user) == {"users": 0, "conversations": 0}
