"""The per-user rate limit holds against a user who tries to get around it.

The limit counts the platform's user id, not what the user calls themselves, and
it is one count for the deployment, not one per worker.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import IncomingMessage, ReplyKind
from tests.support import ServiceFactory, messages_of, new_user

pytestmark = pytest.mark.timeout(60)

LIMIT = 5


async def test_changing_the_display_name_does_not_reset_the_limit(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(rate_limit_per_minute=LIMIT)
    user = new_user()
    kinds = [
        (await service.handle(IncomingMessage("console", user, f"m{i}", username=f"name {i}"))).kind
        for i in range(LIMIT + 5)
    ]

    assert kinds == [ReplyKind.ANSWER] * LIMIT + [ReplyKind.RATE_LIMITED] * 5
    stored = [row.content for row in await messages_of(engine, user) if row.role == "user"]
    assert stored == [f"m{i}" for i in range(LIMIT)]


async def test_a_burst_across_two_workers_is_limited_once(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    """Two workers on one Redis and Postgres, a concurrent burst from one user."""
    workers = [await make_service(rate_limit_per_minute=LIMIT) for _ in range(2)]
    user = new_user()
    burst = 4 * LIMIT

    replies = await asyncio.gather(
        *(
            workers[i % 2].handle(
                IncomingMessage(
                    "console",
                    user,
                    f"m{i}",
                    username=f"alias {i}",
                    platform_message_id=f"{user}:{i}",
                )
            )
            for i in range(burst)
        )
    )

    kinds = Counter(reply.kind for reply in replies)
    assert kinds == {ReplyKind.ANSWER: LIMIT, ReplyKind.RATE_LIMITED: burst - LIMIT}, replies
    notices = [r for r in replies if r.kind is ReplyKind.RATE_LIMITED and r.text is not None]
    assert len(notices) == 1  # told once, not once per worker or per message
    stored = await messages_of(engine, user)
    assert len([row for row in stored if row.role == "user"]) == LIMIT
    assert len({row.conversation_id for row in stored}) == 1


async def test_the_limit_holds_across_workers_while_redis_is_down(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    """Without Redis each worker limits locally: at most the limit per worker gets through."""
    dead_redis = "redis://127.0.0.1:1/0"
    workers = [
        await make_service(
            rate_limit_per_minute=LIMIT,
            redis_url=dead_redis,
            redis_socket_connect_timeout_seconds=0.2,
        )
        for _ in range(2)
    ]
    user = new_user()

    replies = [
        await workers[i % 2].handle(IncomingMessage("console", user, f"m{i}", username=f"n{i}"))
        for i in range(4 * LIMIT)
    ]

    answered = [r for r in replies if r.kind is ReplyKind.ANSWER]
    assert len(answered) == 2 * LIMIT  # each worker's own count; no more
    assert len([r for r in replies if r.kind is ReplyKind.RATE_LIMITED and r.text is not None]) == 2
