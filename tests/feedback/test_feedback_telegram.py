"""Ratings of replies on Telegram: 👍/👎 reactions (message_reaction updates) through
python-telegram-bot for real, by long polling and by webhook, against the local Bot API
server; real Postgres and Redis behind the service."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.emulators.telegram_api import (
    BOT_USERNAME,
    FakeBotApi,
    entities,
    group_chat,
    message,
    private_chat,
    private_update,
    reaction,
    update,
    user,
)
from tests.channels.test_telegram import (
    LongResponder,
    Start,
    as_json,
    new_id,
    post,
    start_webhook,
)
from tests.feedback.support import DOWN, FIRE, UP, posts_of, rated_as, ratings, replies_to
from tests.support import fetch

pytestmark = pytest.mark.timeout(20)


async def asked_and_answered(
    telegram: FakeBotApi, engine: AsyncEngine, person: dict[str, Any], text: str
) -> tuple[Any, dict[str, Any]]:
    """`person` writes to the bot in private; the stored reply's id, and the person's
    message as pushed."""
    sent = await telegram.push(private_update(telegram, person, text))
    await telegram.wait_for(lambda: any(f'"{text}"' in m["text"] for m in telegram.sent))
    [reply] = await replies_to(engine, "telegram", str(person["id"]))
    return reply, sent["message"]


async def test_thumbs_on_a_reply_rate_it_the_latest_wins_removing_leaves_none(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    await start()
    ada = user(new_id(), "ada")
    reply, asked = await asked_and_answered(telegram, engine, ada, "rate me")
    [(chat, post_id)] = await posts_of(engine, reply)
    assert chat == str(ada["id"])
    assert "rate me" in telegram.bot_messages[int(post_id)]["text"]  # the reply's post
    chat_of = private_chat(ada)
    person = str(ada["id"])

    await telegram.push(reaction(telegram, chat_of, ada, int(post_id), new=(UP,)))
    await rated_as(engine, "telegram", person, {reply: 1})
    await telegram.push(reaction(telegram, chat_of, ada, int(post_id), old=(UP,), new=(DOWN,)))
    await rated_as(engine, "telegram", person, {reply: -1})
    # Other emoji change nothing; on the user's own message, or a message unknown, neither.
    await telegram.push(reaction(telegram, chat_of, ada, int(post_id), old=(DOWN,), new=(FIRE,)))
    await rated_as(engine, "telegram", person, {})  # 👎 replaced by 🔥: taken back
    await telegram.push(reaction(telegram, chat_of, ada, asked["message_id"], new=(UP,)))
    await telegram.push(reaction(telegram, chat_of, ada, 999_999_999, new=(UP,)))
    await telegram.push(reaction(telegram, chat_of, ada, int(post_id), old=(FIRE,), new=(DOWN,)))
    await rated_as(engine, "telegram", person, {reply: -1})  # the last one only
    await telegram.push(reaction(telegram, chat_of, ada, int(post_id), old=(DOWN,)))
    await rated_as(engine, "telegram", person, {})


async def test_each_part_of_a_long_reply_in_a_group_rates_the_reply(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    await start(responder=LongResponder())
    group, bo, cy = group_chat(-1009876543210), user(new_id(), "bo"), user(new_id(), "cy")
    text = f"@{BOT_USERNAME} tell me a lot"
    mention = entities(text, "mention", f"@{BOT_USERNAME}")
    await telegram.push(update(telegram, message(telegram, group, bo, text, entities=mention)))
    [reply] = await until_replied(engine, str(bo["id"]))
    parts = await posts_of(engine, reply, parts=3)
    assert len(parts) == 3 and {chat for chat, _ in parts} == {str(group["id"])}
    # cy writes too (a rater must have written to the bot), then rates bo's reply.
    said = f"@{BOT_USERNAME} hi"
    hi = entities(said, "mention", f"@{BOT_USERNAME}")
    await telegram.push(update(telegram, message(telegram, group, cy, said, entities=hi)))
    await until_replied(engine, str(cy["id"]))

    second = int(parts[1][1])
    await telegram.push(reaction(telegram, group, cy, second, new=(UP,)))
    await telegram.push(reaction(telegram, group, bo, int(parts[2][1]), new=(DOWN,)))
    await rated_as(engine, "telegram", str(cy["id"]), {reply: 1})
    await rated_as(engine, "telegram", str(bo["id"]), {reply: -1})


async def until_replied(engine: AsyncEngine, person: str) -> list[Any]:
    """The replies to `person`, once there is one."""
    deadline = time.monotonic() + 8.0
    while not (found := await replies_to(engine, "telegram", person)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no reply to {person}")
        await asyncio.sleep(0.05)
    return found


async def test_a_reaction_by_someone_who_never_wrote_is_ignored(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    await start()
    eve, stranger = user(new_id(), "eve"), user(new_id(), "stranger")
    reply, _ = await asked_and_answered(telegram, engine, eve, "mine")
    [(_, post_id)] = await posts_of(engine, reply)

    await telegram.push(reaction(telegram, private_chat(eve), stranger, int(post_id), new=(UP,)))
    await telegram.push(reaction(telegram, private_chat(eve), eve, int(post_id), new=(UP,)))
    await rated_as(engine, "telegram", str(eve["id"]), {reply: 1})
    assert await ratings(engine, "telegram", str(stranger["id"])) == {}
    rows = await count_users(engine, str(stranger["id"]))
    assert rows == 0  # a reaction makes no user


async def count_users(engine: AsyncEngine, person: str) -> int:
    rows = await fetch(
        engine,
        "SELECT count(*) AS n FROM users WHERE channel_type = 'telegram' AND channel_user_id = :u",
        u=person,
    )
    return int(rows[0].n)


async def test_reactions_come_by_webhook_too(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    _, url = await start_webhook(start)
    assert "message_reaction" in telegram.webhook["allowed_updates"]
    fay = user(new_id(), "fay")
    assert await post(url, as_json(private_update(telegram, fay, "hooked"))) == 200
    await telegram.wait_for(lambda: any("hooked" in m["text"] for m in telegram.sent))
    [reply] = await replies_to(engine, "telegram", str(fay["id"]))
    [(_, post_id)] = await posts_of(engine, reply)

    rated = reaction(telegram, private_chat(fay), fay, int(post_id), new=(DOWN,))
    assert telegram.delivers(rated)  # Telegram sends it: the bot asked for reactions
    assert await post(url, as_json(rated)) == 200
    await rated_as(engine, "telegram", str(fay["id"]), {reply: -1})
