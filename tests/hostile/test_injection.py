"""SQL-, Redis-protocol- and Lua-shaped text is data: stored, cached and shown verbatim.

Extends tests/test_validation.py::test_hostile_looking_text_is_stored_verbatim: the
text is followed through Postgres, the `context:conv:*` list in Redis and /history,
and the database and the other keys are checked to be intact afterwards.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import IncomingMessage, ReplyKind
from tests.hostile.checks import cached_context
from tests.hostile.strategies import INJECTION_SHAPES
from tests.support import ServiceFactory, fetch, messages_of, new_user, usernames

pytestmark = pytest.mark.timeout(60)

TABLES = ("users", "conversations", "messages", "channel_configs")


async def table_counts(engine: AsyncEngine) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        [row] = await fetch(engine, f"SELECT count(*) AS n FROM {table}")
        counts[table] = row.n
    return counts


@pytest.mark.parametrize("text", INJECTION_SHAPES)
async def test_injection_shaped_text_round_trips_verbatim(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis, text: str
) -> None:
    service = await make_service()
    witness, attacker = new_user(), new_user()
    await service.handle(IncomingMessage("console", witness, "I was here", username="witness"))
    sentinel = f"{service.settings.redis_key_prefix}sentinel"
    await redis.set(sentinel, "still here")
    before = await table_counts(engine)
    expected = text.strip()

    reply = await service.handle(IncomingMessage("console", attacker, text, username=text))

    assert reply.kind is ReplyKind.ANSWER and reply.conversation_id is not None
    stored = [(row.role, row.content) for row in await messages_of(engine, attacker)]
    assert stored == [("user", expected), ("assistant", reply.text)]
    assert await cached_context(redis, service, reply.conversation_id) == stored[::-1]
    history = await service.handle(IncomingMessage("console", attacker, "/history 1"))
    assert history.kind is ReplyKind.COMMAND
    assert f"you: {expected}" in (history.text or "")
    # Nothing else moved: two new rows, no table gone, the witness and the key untouched.
    after = await table_counts(engine)
    grown = {"users": 1, "conversations": 1, "messages": 2}
    assert after == {table: count + grown.get(table, 0) for table, count in before.items()}
    witnessed = await messages_of(engine, witness)
    assert [row.role for row in witnessed] == ["user", "assistant"]
    assert witnessed[0].content == "I was here"
    assert await redis.get(sentinel) == b"still here"
    # The next message reads the context back from Redis and still sees the text.
    follow = await service.handle(IncomingMessage("console", attacker, "again"))
    assert "2 earlier messages" in (follow.text or "")
    assert (await cached_context(redis, service, reply.conversation_id))[2:] == stored[::-1]


async def test_injection_shaped_names_and_ids_are_stored_verbatim(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    """The user id goes into Redis key names and SQL parameters: it stays one user's."""
    service = await make_service()
    for shape in INJECTION_SHAPES:
        user = f"{new_user()}{shape.strip()}"[:255]
        reply = await service.handle(IncomingMessage("console", user, "hi", username=shape))
        assert reply.kind is ReplyKind.ANSWER, (shape, reply)
        assert await usernames(engine, "console", user) == [shape.strip()]
        again = await service.handle(IncomingMessage("console", user, "again", username=shape))
        assert "2 earlier messages" in (again.text or ""), shape  # its session, from Redis
