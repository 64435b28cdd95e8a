"""One worker process of the shared-conversation race: `python -m
tests.concurrent_shared_client CHAT THREAD USER TEXT...` sends every TEXT of USER at once
into a Slack thread (a shared conversation by default) and prints the replies as JSON."""

from __future__ import annotations

import asyncio
import json
import sys

from bot.domain import ChatKind, IncomingMessage
from tests.support import service_told_to_go


def in_thread(chat: str, thread: str, user: str, text: str) -> IncomingMessage:
    return IncomingMessage(
        "slack", user, text, username=user, platform_message_id=f"{user}:{text}",
        chat_id=chat, thread_id=thread, chat_kind=ChatKind.THREAD,
    )  # fmt: skip


async def main(chat: str, thread: str, user: str, texts: list[str]) -> None:
    async with service_told_to_go() as service:
        replies = await asyncio.gather(
            *(service.handle(in_thread(chat, thread, user, text)) for text in texts)
        )
        print(json.dumps([[reply.kind, reply.text] for reply in replies]), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
