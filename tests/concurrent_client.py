"""One worker process of the multi-process test: `python -m tests.concurrent_client USER
TEXT...` builds a service from the environment's settings, prints "ready", waits for a
line on stdin, then sends every TEXT of USER at once and prints the replies as JSON."""

from __future__ import annotations

import asyncio
import json
import sys

from bot.config import load_settings
from bot.domain import IncomingMessage
from bot.runtime import build_service, create_redis
from bot.store.engine import create_engine


async def main(user: str, texts: list[str]) -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url is not None and settings.redis_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value())
    redis = create_redis(settings, settings.redis_url.get_secret_value())
    service = build_service(settings, engine, redis)
    try:
        await redis.ping()  # connected before the start, so the messages leave together
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        replies = await asyncio.gather(
            *(
                service.handle(IncomingMessage("console", user, text, platform_message_id=text))
                for text in texts
            )
        )
        print(json.dumps([[reply.kind, reply.text] for reply in replies]), flush=True)
    finally:
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
