"""Ratings of replies on Discord: 👍/👎 reactions (the gateway's MESSAGE_REACTION_ADD and
_REMOVE, discord.py's raw reaction events) through discord.py for real against the
local Discord; real Postgres and Redis behind the service."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.emulators.discord_api import FakeDiscord, Json, user
from tests.channels.test_discord import LongResponder, StartBot, answered
from tests.feedback.support import DOWN, FIRE, UP, posts_of, rated_as, ratings, replies_to

pytestmark = pytest.mark.timeout(30)


def bot_post(server: FakeDiscord, channel_id: str, index: int = 0) -> Json:
    """The bot's `index`th message in the channel, as a reaction names it."""
    ids = [i for i, found in server.bot_messages.items() if found["channel_id"] == channel_id]
    return server.bot_message(ids[index])


async def react(server: FakeDiscord, person: Json, post: Json, emoji: str, **how: bool) -> None:
    assert await server.push_reaction(server.reaction(person, post, emoji, **how)) is not None


async def test_thumbs_in_a_dm_rate_the_reply_the_latest_wins_removing_leaves_none(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    await start_bot()
    ada = user("ada")
    asked = discord_server.message(ada, "rate me")
    await answered(discord_server, asked)
    later = discord_server.message(ada, "and me", channel_id=asked["channel_id"])
    await answered(discord_server, later, parts=2)
    reply, other = await replies_to(engine, "discord", ada["id"])
    post = bot_post(discord_server, asked["channel_id"])
    assert await posts_of(engine, reply) == [(asked["channel_id"], post["id"])]

    await react(discord_server, ada, post, UP)
    await rated_as(engine, "discord", ada["id"], {reply: 1})
    await react(discord_server, ada, post, DOWN)  # both on the post now: the latest counts
    await rated_as(engine, "discord", ada["id"], {reply: -1})
    await react(discord_server, ada, post, UP, added=False)  # 👎 is still there
    await react(discord_server, ada, post, FIRE)  # other emoji: nothing
    await react(discord_server, ada, asked, UP)  # on the user's own message: nothing
    unknown = {**post, "id": "123456789012345678"}
    await react(discord_server, ada, unknown, UP)  # a message the bot never posted
    # A user's reactions are recorded in order: once this one is, those before it are.
    await react(discord_server, ada, bot_post(discord_server, asked["channel_id"], 1), UP)
    await rated_as(engine, "discord", ada["id"], {reply: -1, other: 1})
    await react(discord_server, ada, post, DOWN, added=False)
    await rated_as(engine, "discord", ada["id"], {other: 1})


async def test_each_part_of_a_long_reply_in_a_channel_rates_the_reply(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    await start_bot(LongResponder())
    bo = user("bo")
    mention = f"<@{discord_server.bot['id']}> tell me a lot"
    asked = discord_server.message(bo, mention, guild=True, mentions=(discord_server.bot,))
    await answered(discord_server, asked, parts=3)
    [reply] = await replies_to(engine, "discord", bo["id"])
    assert len(await posts_of(engine, reply, parts=3)) == 3

    await react(discord_server, bo, bot_post(discord_server, asked["channel_id"], 1), DOWN,
                guild=True)  # fmt: skip
    await rated_as(engine, "discord", bo["id"], {reply: -1})


async def test_a_reaction_by_someone_who_never_wrote_or_a_bot_is_ignored(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    await start_bot()
    eve, stranger, other_bot = user("eve"), user("stranger"), user("otherbot", bot=True)
    asked = discord_server.message(eve, "mine")
    await answered(discord_server, asked)
    [reply] = await replies_to(engine, "discord", eve["id"])
    post = bot_post(discord_server, asked["channel_id"])
    await posts_of(engine, reply)

    await react(discord_server, stranger, post, UP)
    await react(discord_server, discord_server.bot, post, UP)  # the bot's own
    await react(discord_server, other_bot, post, UP, guild=True)
    await react(discord_server, eve, post, f"{UP}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}")
    await rated_as(engine, "discord", eve["id"], {reply: 1})
    assert await ratings(engine, "discord", stranger["id"]) == {}
