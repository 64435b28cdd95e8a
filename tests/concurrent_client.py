"""One worker process of the multi-process test: `python -m tests.concurrent_client USER
TEXT...` builds a service from the environment's settings, prints "ready", waits for a
line on stdin, then sends every TEXT of USER at once and prints the replies as JSON."""

from __future__ import annotations

import asyncio
import json
import sys

from bot.domain import IncomingMessage
from tests.support import service_told_to_go


async def main(user: str, texts: list[str]) -> None:
    async with service_told_to_go() as service:
        replies = await asyncio.gather(
            *(
                service.handle(IncomingMessage("console", user, text, platform_message_id=text))
                for text in texts
            )
        )
        print(json.dumps([[reply.kind, reply.text] for reply in replies]), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
