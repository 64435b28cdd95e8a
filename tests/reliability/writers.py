"""Users who keep writing to one service while a test breaks something under them: each
message must be answered, and in the end be stored once, in each user's order."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.guard import RedisGuard
from bot.domain import ReplyKind
from bot.service import ConversationService
from tests.support import messages_of, msg, new_user, until


class Writers:
    def __init__(self, service: ConversationService, users: int) -> None:
        self.service = service
        self.sent: dict[str, list[str]] = {new_user(): [] for _ in range(users)}
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._write(user)) for user in self.sent]

    @property
    def users(self) -> list[str]:
        return list(self.sent)

    async def _write(self, user: str) -> None:
        number = 0
        while not self._stop.is_set():
            text = f"message {number}"
            reply = await self.service.handle(msg(user, text, pid=f"{user}-{number}"))
            assert reply.kind is ReplyKind.ANSWER and reply.text is not None, reply
            self.service.delivered(msg(user, text, pid=f"{user}-{number}"), reply.kind)
            self.sent[user].append(text)
            number += 1
            await asyncio.sleep(0.02)

    def writing(self, condition: bool) -> bool:
        """`condition`, while every writer writes (a writer's error is raised at once)."""
        for task in self._tasks:
            if task.done():
                task.result()
                raise AssertionError("a writer stopped")
        return condition

    def each_wrote(self, at_least: int) -> bool:
        return self.writing(all(len(texts) >= at_least for texts in self.sent.values()))

    def written(self) -> int:
        return sum(len(texts) for texts in self.sent.values())

    async def back_on_the_cache(self, guard: RedisGuard, within: float) -> float:
        """Once the breaker has closed and each user has written twice more; when (time.monotonic)
        it closed."""
        await until(lambda: self.writing(not guard.is_open), within, what="the bot on the cache")
        closed = time.monotonic()
        before = self.written()
        more = 2 * len(self.sent)
        await until(lambda: self.writing(self.written() >= before + more), within=30)
        return closed

    async def stop(self) -> None:
        """Stop writing; raises what a writer met."""
        self._stop.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []

    async def assert_stored_in_order(self, engine: AsyncEngine) -> None:
        for user, texts in self.sent.items():
            rows = await messages_of(engine, user)
            assert [r.content for r in rows if r.role == "user"] == texts  # once, in order
            assert [r.role for r in rows] == ["user", "assistant"] * len(texts)
