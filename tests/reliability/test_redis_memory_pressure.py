"""Redis at its maxmemory, evicting under the documented policy (allkeys-lru, as in
redis.conf), while two workers answer the same users at the same time (DESIGN.md,
invariant 9).

Eviction takes users' locks, event claims and cached context along with everything
else, so the workers often both hold a user's turn as Redis sees it. Postgres fences
each turn (revision 0006): every conversation must still be stored in order, each
reply built on everything said before it, nothing lost or stored twice, and one
active conversation per user.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ReplyKind
from bot.service import ConversationService
from bot.tallies import Tally
from tests.redis_servers import answering, redis_server
from tests.support import (
    ServiceFactory,
    SlowResponder,
    assert_in_order,
    conversation_of,
    fetch,
    msg,
    new_user,
)

log = logging.getLogger(__name__)
USERS, PER_USER = 6, 10  # each user's messages split between the two workers
MAXMEMORY = "2mb"
JUNK = os.urandom(16 * 1024)  # what another tenant of the Redis keeps writing


async def fill(url: str, stop: asyncio.Event) -> None:
    """Keep Redis at its maxmemory: write junk until told to stop."""
    client = Redis.from_url(url)
    number = 0
    try:
        while not stop.is_set():
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(20):
                    number += 1
                    pipe.set(f"junk:{number}", JUNK)
                await pipe.execute()
            await asyncio.sleep(0)
    finally:
        await client.aclose()


async def talk(
    worker: ConversationService, user: str, turns: range, kinds: list[ReplyKind]
) -> None:
    async def screen(piece: str) -> None:
        return None

    for number in turns:
        stream = screen if number % 4 == 0 else None  # some replies streamed, some whole
        reply = await worker.handle(msg(user, f"message {number}", f"{user}-{number}"), stream)
        kinds.append(reply.kind)


@pytest.mark.timeout(180)
async def test_two_workers_on_an_evicting_redis_keep_every_conversation_in_order(
    tmp_path: Path, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    policy = ("--maxmemory", MAXMEMORY, "--maxmemory-policy", "allkeys-lru")
    with redis_server(tmp_path / "lru", *policy) as server:
        await answering(server.url)
        workers = [
            await make_service(responder=SlowResponder(0.01), redis_url=server.url)
            for _ in range(2)
        ]
        stop = asyncio.Event()
        filling = asyncio.ensure_future(fill(server.url, stop))
        users, kinds = [new_user() for _ in range(USERS)], list[ReplyKind]()
        try:
            await asyncio.gather(
                *(
                    talk(worker, user, range(half, PER_USER, 2), kinds)
                    for user in users
                    for half, worker in enumerate(workers)
                )
            )
        finally:
            stop.set()
            await filling
        probe = Redis.from_url(server.url)
        evicted = int((await probe.info("stats"))["evicted_keys"])
        await probe.aclose()

    conflicts = sum(worker.stats[Tally.TURN_CONFLICT] for worker in workers)
    log.warning("Redis at maxmemory (allkeys-lru): %d keys evicted; %d turns answered "
                "again on the newer context", evicted, conflicts)  # fmt: skip
    assert evicted > 0
    assert kinds.count(ReplyKind.ANSWER) == USERS * PER_USER, kinds
    for user in users:
        conversation = await conversation_of(engine, user)
        assert len(conversation) == 2 * PER_USER
        assert_in_order(conversation)
    active = await fetch(
        engine,
        "SELECT count(*) AS n FROM conversations c JOIN users u ON u.id = c.user_id "
        "WHERE u.channel_user_id = ANY(:users) AND c.is_active",
        users=users,
    )
    assert active[0].n == USERS
