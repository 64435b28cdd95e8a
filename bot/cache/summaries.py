"""What summarising a conversation (bot/summaries.py) asks of Redis: one worker at a
time per conversation, and the cached context forgotten once a summary is stored, so
that the next message reads it (summary and all) from Postgres.

Both are best effort: with Redis away, two workers may ask for the same summary (the
store keeps one), and the cached context is one a summary may still replace.
"""

from __future__ import annotations

import contextlib
import uuid

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from bot.cache.claim import turn_keys
from bot.cache.guard import RedisGuard
from bot.cache.keys import Keys
from bot.domain import IncomingMessage
from bot.errors import CacheUnavailable


class SummaryCache:
    def __init__(self, redis: Redis, keys: Keys, guard: RedisGuard) -> None:
        self.redis = redis
        self.keys = keys
        self.guard = guard

    async def lock(self, conversation_id: uuid.UUID, seconds: float) -> Lock | None:
        """The conversation's summary lock, held for `seconds` at most; None if another
        worker holds it. Redis away: a lock that is none (the store keeps one summary)."""
        key = self.keys.summary_lock(conversation_id)
        lock = self.redis.lock(key, timeout=seconds, blocking=False)
        try:
            taken = await self.guard.run(lambda: lock.acquire())
        except CacheUnavailable:
            return lock
        return lock if taken else None

    async def unlock(self, lock: Lock) -> None:
        async def release() -> None:
            # Not held (Redis was away when taken), or lapsed: not ours to delete.
            with contextlib.suppress(LockError):
                await lock.release()

        with contextlib.suppress(CacheUnavailable):  # it lapses
            await self.guard.run(release)

    async def forget_context(
        self, message: IncomingMessage, shared: bool, conversation_id: uuid.UUID
    ) -> bool:
        """Delete the conversation's cached context (its list: the summary and fence in
        the session hash go with the next list written); False if Redis is away."""
        session = turn_keys(self.keys, message, shared).session
        key = self.keys.context_of(session, conversation_id)
        try:
            await self.guard.run(lambda: self.redis.delete(key))
        except CacheUnavailable:
            return False
        return True
