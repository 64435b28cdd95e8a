"""What the feedback tests of every platform read: ratings stored, replies, their posts."""

from __future__ import annotations

import asyncio
import time
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import fetch

UP, DOWN = "\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}"
FIRE = "\N{FIRE}"


async def ratings(engine: AsyncEngine, channel: str, channel_user_id: str) -> dict[uuid.UUID, int]:
    """The ratings a platform user gave: the rated reply's messages.id -> 1 or -1."""
    rows = await fetch(
        engine,
        "SELECT f.message_id, f.rating FROM feedback f JOIN users u ON u.id = f.user_id "
        "WHERE u.channel_type = :channel AND u.channel_user_id = :user",
        channel=channel,
        user=channel_user_id,
    )
    return {row.message_id: row.rating for row in rows}


async def rated_as(
    engine: AsyncEngine, channel: str, channel_user_id: str, wanted: dict[uuid.UUID, int]
) -> None:
    """Wait until the user's ratings are `wanted` (a rating is recorded as the platform's
    event arrives, apart from any reply)."""
    deadline = time.monotonic() + 8.0
    while (found := await ratings(engine, channel, channel_user_id)) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"ratings {found}, wanted {wanted}")
        await asyncio.sleep(0.05)


async def replies_to(engine: AsyncEngine, channel: str, channel_user_id: str) -> list[uuid.UUID]:
    """The ids of the bot's replies to what the user wrote, oldest first."""
    rows = await fetch(
        engine,
        "SELECT r.id FROM messages r JOIN messages q ON q.id = r.reply_to "
        "JOIN conversations c ON c.id = q.conversation_id "
        "JOIN users u ON u.id = coalesce(q.author_id, c.user_id) "
        "WHERE r.role = 'assistant' AND u.channel_type = :channel AND u.channel_user_id = :user "
        "ORDER BY r.timestamp",
        channel=channel,
        user=channel_user_id,
    )
    return [row.id for row in rows]


async def posts_of(engine: AsyncEngine, reply: uuid.UUID, parts: int = 1) -> list[tuple[str, str]]:
    """The platform posts (chat, post id) kept as showing the reply, once there are
    `parts` of them (they are written in a batch after the reply is delivered)."""
    deadline = time.monotonic() + 8.0
    while True:
        rows = await fetch(
            engine,
            "SELECT chat_id, post_id FROM reply_posts WHERE message_id = :id "
            "ORDER BY post_id::numeric",
            id=reply,
        )
        if len(rows) >= parts or time.monotonic() > deadline:
            return [(row.chat_id, row.post_id) for row in rows]
        await asyncio.sleep(0.05)
