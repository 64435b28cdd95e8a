"""A COMMIT whose answer was lost, for real (docs/reliability.md).

A COMMIT that reached Postgres, whose answer was then lost (a network partition, or a
server frozen after it read the COMMIT: tests/reliability/partition.py cuts the line
right after it), leaves the bot unable to tell whether the exchange was stored. The
retry cannot reach the server either, so the user is told UNAVAILABLE although the
exchange is in Postgres. The event's claim is left 'unfinished', so its redelivery,
finding the event stored, sends the reply stored then: late, but once, and not lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ReplyKind
from bot.embedded import EmbeddedPostgres
from bot.service import UNAVAILABLE_TEXT
from tests.reliability.conftest import OWNED_DATABASE
from tests.reliability.partition import Partition
from tests.support import FAST_POSTGRES, ServiceFactory, handled, messages_of, msg, new_user


@pytest.fixture
async def partition(fault_postgres: EmbeddedPostgres) -> AsyncIterator[Partition]:
    proxy = Partition(fault_postgres.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.mark.timeout(60)
async def test_commit_whose_answer_was_lost_is_answered_on_redelivery(
    make_service: ServiceFactory, partition: Partition, owned_pg: AsyncEngine
) -> None:
    service = await make_service(database_url=partition.url(OWNED_DATABASE), **FAST_POSTGRES)
    user = new_user()
    warm = await service.handle(msg(user, "warm", pid=f"{user}:1"))
    assert warm.kind is ReplyKind.ANSWER  # cached: the next message only writes

    partition.armed = True
    told = await service.handle(msg(user, "lost answer", pid=f"{user}:2"))
    assert partition.cut, "the COMMIT never went through the proxy"
    partition.heal()

    assert told.kind is ReplyKind.UNAVAILABLE and told.text == UNAVAILABLE_TEXT
    rows = await messages_of(owned_pg, user)
    assert [r.content for r in rows if r.role == "user"] == ["warm", "lost answer"]
    assert len(rows) == 4  # stored, with its reply, though the user was told it failed
    stored_reply = rows[3].content

    redelivered = await handled(service, msg(user, "lost answer", pid=f"{user}:2"))
    assert len(await messages_of(owned_pg, user)) == 4  # still stored once
    assert redelivered.kind is ReplyKind.ANSWER and redelivered.text == stored_reply
    again = await service.handle(msg(user, "lost answer", pid=f"{user}:2"))
    assert again.kind is ReplyKind.DUPLICATE and again.text is None  # now it is done
