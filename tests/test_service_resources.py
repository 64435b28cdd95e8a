"""What the service holds while the responder thinks: no database connection, so a
slow LLM cannot starve the pool (issue 3, "never hold a database connection while
waiting for the responder")."""

from __future__ import annotations

import asyncio

from bot.domain import ReplyKind
from tests.support import GatedResponder, ServiceFactory, msg, new_user


async def test_no_database_connection_is_held_while_the_responder_works(
    make_service: ServiceFactory,
) -> None:
    responder = GatedResponder()
    service = await make_service(responder=responder)
    pool = service.store.engine.sync_engine.pool
    user = new_user()

    for text in ("first, cold", "second, warm"):
        responder.started.clear()
        responder.release.clear()
        handling = asyncio.create_task(service.handle(msg(user, text)))
        await asyncio.wait_for(responder.started.wait(), timeout=10)
        assert pool.checkedout() == 0, text  # type: ignore[attr-defined]
        responder.release.set()
        reply = await asyncio.wait_for(handling, timeout=10)
        assert reply.kind is ReplyKind.ANSWER
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
