"""One worker process of the fast-writers scenario (test_fast_writers_without_redis.py).

`python -m tests.reliability.writer_process SPEC` builds a worker from the
environment's settings: the service, its dispatcher, and the real Worker around a
channel with no platform (`InboxChannel`), so that the worker tends the inbox as in
production (renews the leases of the events in hand, and its sweep answers those put
back). It prints "ready", waits for a line "go T0" (T0 on the machine's monotonic
clock, which every process shares), then hands each message of its schedule to the
channel at T0 + its offset, as a platform would, without waiting for the replies
before. Once the inbox holds nothing of the users any more (every reply delivered, by
whichever worker), it prints what it received and delivered as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.base import ChannelAdapter
from bot.channels.dispatch import Dispatcher
from bot.config import load_settings
from bot.domain import IncomingMessage, ReplyKind
from bot.metrics import Metrics
from bot.runtime import build_service
from bot.store.engine import create_engine
from bot.stores import create_redis
from bot.worker import Worker
from tests.support import SlowResponder, fetch

CHANNEL = "console"

_LEFT = "SELECT count(*) AS left FROM inbox WHERE message->>'channel_user_id' = ANY(:users)"


class InboxChannel(ChannelAdapter):
    """A channel whose platform is this process: it takes each message as an adapter
    does (kept in the inbox, then handled, then the reply delivered) and records every
    reply it delivers, with the time, also those the worker's sweep sends (`send_to`)."""

    name = CHANNEL
    resumes = True

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher)
        self.received: dict[str, dict[str, Any]] = {}
        self.replies: list[dict[str, Any]] = []
        self._stopped = asyncio.Event()

    @property
    def connected(self) -> bool:
        return not self._stopped.is_set()

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()

    async def take(self, message: IncomingMessage) -> None:
        """A platform event: kept, acknowledged, answered, delivered."""
        assert message.platform_message_id is not None
        sent = time.monotonic()
        receipt = await self.dispatcher.receive(message)
        self.received[message.platform_message_id] = {
            "seq": receipt.seq,
            "taken": receipt.taken,
            "sent": sent,  # the receipt began
            "at": time.monotonic(),  # and ended: the platform was told it arrived
        }
        if not receipt.taken:
            return
        reply = await self.dispatcher.handle(message)
        if reply.text is not None:
            self._record(message, reply.text, reply.kind, "direct")
        self.dispatcher.delivered(message, reply)

    async def send_to(
        self, message: IncomingMessage, text: str, reply_id: uuid.UUID | None = None
    ) -> bool:
        self._record(message, text, ReplyKind.ANSWER, "sweep")
        return True

    def _record(self, message: IncomingMessage, text: str, kind: ReplyKind, path: str) -> None:
        self.replies.append(
            {
                "pid": message.platform_message_id,
                "user": message.channel_user_id,
                "text": message.text,
                "reply": text,
                "kind": kind.value,
                "path": path,
                "at": time.monotonic(),
            }
        )


@asynccontextmanager
async def worker_told_to_go(delay: float) -> AsyncIterator[tuple[InboxChannel, AsyncEngine, float]]:
    """The worker running, once "ready" was printed and "go T0" came on stdin; stopped
    (as by SIGTERM) when the block ends."""
    settings = load_settings(_env_file=None)
    assert settings.database_url is not None and settings.redis_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value())
    redis = create_redis(settings, settings.redis_url.get_secret_value())
    service = build_service(settings, engine, redis, SlowResponder(delay))
    dispatcher = Dispatcher(service, Metrics())
    channel = InboxChannel(dispatcher)
    worker = Worker([channel], dispatcher, None, shutdown_grace=10)
    running = asyncio.create_task(worker.run())
    try:
        await redis.ping()  # connected before the start: the test stops Redis next
        print("ready", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        yield channel, engine, float(line.split()[1])
    finally:
        worker.request_stop()
        await running
        await redis.aclose()
        await engine.dispose()


async def main(spec: dict[str, Any]) -> None:
    async with worker_told_to_go(spec["delay"]) as (channel, engine, start):

        async def write(user: str, number: int, offset: float) -> None:
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            text = f"message {number} from {user}"
            await channel.take(IncomingMessage(CHANNEL, user, text, user, f"{user}:{number}"))

        writes = [write(*planned) for planned in spec["schedule"]]
        await asyncio.gather(*writes)
        async with asyncio.timeout(spec["within"]):
            while (await fetch(engine, _LEFT, users=spec["users"]))[0].left:  # noqa: ASYNC110 - another process's work, in Postgres
                await asyncio.sleep(0.1)
        stats = dict(channel.dispatcher.service.stats)
        done = {"received": channel.received, "replies": channel.replies, "stats": stats}
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
