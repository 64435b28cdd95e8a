"""`bot ops user block|unblock|blocked`: the blocklist as ops change it, and running
workers following within seconds (pub/sub; their periodic reload is set far off)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.blocklist import BlockedUsers
from bot.cache.keys import Keys
from bot.domain import ReplyKind
from bot.service import ConversationService
from tests.ops.conftest import Ops
from tests.support import ServiceFactory, fetch, handled, msg, new_user, until


@pytest.fixture
async def worker(make_service: ServiceFactory) -> AsyncIterator[ConversationService]:
    """A service whose blocklist listens like a worker's; reloads only on announcements."""
    service = await make_service(flags_refresh_seconds=60)
    mirror = service.blocklist
    assert isinstance(mirror, BlockedUsers)
    await mirror.start()
    yield service
    await mirror.stop()


async def test_block_list_and_unblock(ops: Ops, redis: Redis, keys: Keys) -> None:
    user = new_user()

    first = await ops("user", "block", "telegram", user, "--reason", "spam links", "--json")
    again = await ops("user", "block", "telegram", user, "--json")
    listed = (await ops("user", "blocked", "--json")).data["blocked"]
    table = await ops("user", "blocked")

    assert first.data["action"] == "blocked" and first.data["cached"] is True
    assert again.data["action"] == "was blocked already"
    [row] = [r for r in listed if r["user"] == user]
    assert (row["channel"], row["reason"]) == ("telegram", "spam links")  # reason kept
    assert row["blocked_at"] is not None
    assert user in table.out and "spam links" in table.out
    assert await redis.hget(keys.blocklist(), f"telegram:{user}") == b"spam links"

    gone = await ops("user", "unblock", "telegram", user, "--json")
    twice = await ops("user", "unblock", "telegram", user, "--json")
    assert (gone.data["action"], twice.data["action"]) == ("unblocked", "was not blocked")
    assert all(r["user"] != user for r in (await ops("user", "blocked", "--json")).data["blocked"])
    assert await redis.hget(keys.blocklist(), f"telegram:{user}") is None


@pytest.mark.parametrize(
    "args",
    [
        ("user", "block", "nosuchchan", "42"),
        ("user", "block", "telegram", "bad\x01id"),
        ("user", "block", "telegram", "42", "--reason", " "),
        ("user", "block", "telegram", "42", "--reason", "x" * 501),
        ("user", "unblock", "telegram", " "),
    ],
)
async def test_bad_arguments_exit_2_before_any_store(ops: Ops, args: tuple[str, ...]) -> None:
    ran = await ops(*args, "--json")
    assert ran.code == 2, ran.err
    assert ran.json()["exit_code"] == 2


async def test_a_running_worker_stops_answering_within_seconds_and_stores_nothing(
    ops: Ops, worker: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    assert (
        await handled(worker, msg(user, "before", f"{user}-e1", "telegram"))
    ).kind is ReplyKind.ANSWER

    assert (await ops("user", "block", "telegram", user)).code == 0
    await until(lambda: worker.blocklist.current.blocks("telegram", user), 3, "block followed")
    blocked = await handled(worker, msg(user, "while blocked", f"{user}-e2", "telegram"))

    assert (blocked.kind, blocked.text) == (ReplyKind.BLOCKED, None)
    texts = await fetch(
        engine,
        "SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "JOIN users u ON u.id = c.user_id WHERE u.channel_user_id = :u AND m.role = 'user'",
        u=user,
    )
    assert [row.content for row in texts] == ["before"]  # nothing stored of the blocked one

    assert (await ops("user", "unblock", "telegram", user)).code == 0
    await until(lambda: not worker.blocklist.current.blocks("telegram", user), 3, "unblock")
    after = await handled(worker, msg(user, "after", f"{user}-e3", "telegram"))
    assert after.kind is ReplyKind.ANSWER
