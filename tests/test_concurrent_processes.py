"""Invariant 3 across processes: the first messages of one new user, sent at the same
moment by several worker processes, make one user and one conversation, each message
stored once and in order (the per-user lock lives in Redis, not in a process)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from tests.support import fetch, messages_of, new_user, run_together

PROCESSES = 4
MESSAGES_EACH = 3
TIMEOUT = 120.0


def run_workers(settings: Settings, user: str, texts: list[list[str]]) -> list[list[Any]]:
    """Start one worker process per list of texts, let them all go at once, collect replies."""
    commands = [["tests.concurrent_client", user, *own] for own in texts]
    results = run_together(settings, commands, TIMEOUT)
    return [reply for result in results for reply in result]


async def test_first_messages_of_a_new_user_from_several_processes(
    settings: Settings, engine: AsyncEngine, redis: Redis
) -> None:
    user = new_user()
    texts = [[f"p{p} m{m}" for m in range(MESSAGES_EACH)] for p in range(PROCESSES)]

    replies = await asyncio.to_thread(run_workers, settings, user, texts)

    assert [kind for kind, _ in replies] == ["answer"] * PROCESSES * MESSAGES_EACH, replies
    users = await fetch(engine, "SELECT id FROM users WHERE channel_user_id = :u", u=user)
    assert len(users) == 1
    conversations = await fetch(
        engine, "SELECT id, is_active FROM conversations WHERE user_id = :u", u=users[0].id
    )
    assert [c.is_active for c in conversations] == [True]
    rows = await messages_of(engine, user)
    everything = sorted(text for own in texts for text in own)
    assert sorted(r.content for r in rows if r.role == "user") == everything  # each once
    # In order: each user message followed by its own reply, time strictly increasing.
    for asked, answered in zip(rows[::2], rows[1::2], strict=True):
        assert (asked.role, answered.role) == ("user", "assistant")
        assert answered.content.startswith(f'You said: "{asked.content}"')
    assert all(a.timestamp < b.timestamp for a, b in itertools.pairwise(rows))
    earlier = [int(r.content.split("(")[1].split()[0]) for r in rows[1::2]]
    assert earlier == [min(2 * i, 20) for i in range(PROCESSES * MESSAGES_EACH)]  # context cap
