"""The blocklist in the service: a blocked user gets nothing and costs nothing, and a
worker's in-memory copy follows Postgres through a Redis flush.

Real Postgres and Redis; the ops side (bot ops user block) is tests/ops/test_blocklist.py.
"""

from __future__ import annotations

from collections import Counter

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.bench.probes import PgProbe, RedisProbe
from bot.blocklist import BlockedUsers, change_block
from bot.blockset import Blocklist, StaticBlocklist
from bot.domain import NOT_KEPT, BlockedRow, ReplyKind
from bot.metrics import Metrics
from tests.support import CountingResponder, ServiceFactory, fetch, msg, new_user


async def test_a_blocked_user_gets_nothing_and_costs_no_round_trip(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    responder, metrics = CountingResponder(), Metrics()
    blocked, other = new_user(), new_user()
    service = await make_service(responder=responder, metrics=metrics)
    service.blocklist = StaticBlocklist(Blocklist.from_rows([BlockedRow("telegram", blocked)]))
    pg, rd = PgProbe(), RedisProbe()
    pg.attach(service.store.engine)
    rd.attach(service.cache.redis)
    message = msg(blocked, "hello", pid=f"{blocked}-ev-1", channel="telegram")

    receipt = await service.receive(message)  # as an adapter does, before acknowledging
    reply = await service.handle(message)
    service.delivered(message, reply.kind)

    assert receipt is NOT_KEPT  # not kept in the inbox: no statement
    assert (reply.kind, reply.text) == (ReplyKind.BLOCKED, None)
    assert responder.calls == []
    assert pg.snapshot() == Counter() and rd.snapshot() == Counter()
    assert service.stats["blocked"] == 1
    assert "bot_blocked_total 1.0" in metrics.render().decode()
    for table, column in (("users", "channel_user_id"), ("inbox", "place")):
        found = await fetch(
            engine, f"SELECT 1 FROM {table} WHERE {column} LIKE :u", u=f"%{blocked}%"
        )
        assert found == [], table
    # The same user on another platform, and others on this one, are answered.
    assert (await service.handle(msg(blocked, "hi", channel="console"))).kind is ReplyKind.ANSWER
    assert (await service.handle(msg(other, "hi", channel="telegram"))).kind is ReplyKind.ANSWER


async def test_a_flushed_copy_is_refilled_from_postgres(
    make_service: ServiceFactory, redis: Redis
) -> None:
    service = await make_service(flags_refresh_seconds=30)
    mirror = service.blocklist
    assert isinstance(mirror, BlockedUsers)
    user = new_user()
    await change_block(service.store.blocklist, mirror.cache, "slack", user, reason="spam")
    try:
        key = service.cache.keys.blocklist()
        assert await redis.hget(key, f"slack:{user}") == b"spam"
        await redis.delete(key)  # an operator flushing Redis

        assert (await mirror.load()).blocks("slack", user)  # from Postgres, not forgotten
        assert await redis.hget(key, f"slack:{user}") == b"spam"  # and Redis refilled
    finally:
        await change_block(service.store.blocklist, mirror.cache, "slack", user, unblock=True)
    assert not (await mirror.load()).blocks("slack", user)
