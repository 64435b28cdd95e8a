"""Discord's translation: any MESSAGE_CREATE becomes a well-formed IncomingMessage or None.

The adapter runs for real against the local Discord (bot/emulators/discord_api.py),
so its discord.py state knows the server, its channel and its thread. Payloads are
turned into `discord.Message` objects the way discord.py's own MESSAGE_CREATE parser
does, then translated; a second test pushes valid-but-hostile payloads through the
gateway itself and checks what reaches the service and Postgres.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.discord import DiscordAdapter, incoming_message
from bot.channels.registry import discord_options
from bot.emulators.discord_api import TOKEN, FakeDiscord, Json, snowflake, user
from bot.metrics import Metrics
from tests.hostile.checks import assert_well_formed
from tests.hostile.strategies import any_text, documented_cleaning, hostile_text, json_values
from tests.support import RecordingDispatcher, ServiceFactory, messages_of

pytestmark = pytest.mark.timeout(90)
HOSTILE = settings.get_profile("hostile")


@pytest.fixture
async def adapter(
    make_service: ServiceFactory, discord_server: FakeDiscord, redis: object
) -> AsyncIterator[DiscordAdapter]:
    service = await make_service(
        discord_bot_token=TOKEN, discord_api_base_url=discord_server.api_url
    )
    dispatcher = RecordingDispatcher(service, Metrics())
    running = DiscordAdapter(discord_options(service.settings), dispatcher, guild_ready_timeout=0.2)
    task = asyncio.create_task(running.run())
    await discord_server.wait_for(lambda: running.connected or task.done(), 12)
    assert running.connected, task
    yield running
    await running.stop()
    await asyncio.wait_for(task, 10)


def sdk_message(adapter: DiscordAdapter, payload: Json) -> discord.Message:
    """The discord.Message that discord.py's MESSAGE_CREATE parser makes of `payload`."""
    client = adapter._client  # the SDK client the adapter runs
    assert client is not None
    state = client._connection
    channel, _ = state._get_guild_channel(payload)
    return discord.Message(state=state, channel=channel, data=payload)  # type: ignore[arg-type]


AUTHOR_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "username": any_text(40),
    "global_name": any_text(40),
    "bot": st.booleans(),
    "discriminator": st.sampled_from(["0", "1234"]),
}
MESSAGE_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "content": hostile_text(200),
    "type": st.integers(0, 50),
    "webhook_id": st.just("123456789012345678"),
    "mention_everyone": st.booleans(),
    "flags": st.integers(0, 1 << 16),
    "guild_id": st.just("987654321098765432"),  # a server the bot is not in
}


@st.composite
def payloads(draw: st.DrawFn, server: FakeDiscord) -> Json:
    """A message in a DM, the server's channel or its thread, with fields replaced."""
    author = user("someone")
    for key in draw(st.lists(st.sampled_from(sorted(AUTHOR_FIELDS)), max_size=2, unique=True)):
        author[key] = draw(AUTHOR_FIELDS[key] if draw(st.booleans()) else json_values())
    where = draw(st.sampled_from(["dm", "channel", "thread"]))
    mentions = draw(st.sampled_from([(), (server.bot,), (author,)]))
    content = draw(hostile_text(200))
    if draw(st.booleans()):
        content = f"<@{server.bot['id']}> {content}"
    payload = server.message(
        author,
        content,
        guild=where != "dm",
        channel_id=server.thread_id if where == "thread" else None,
        mentions=mentions,
    )
    for key in draw(st.lists(st.sampled_from(sorted(MESSAGE_FIELDS)), max_size=2, unique=True)):
        payload[key] = draw(MESSAGE_FIELDS[key] if draw(st.booleans()) else json_values())
    return payload


async def test_any_message_becomes_a_well_formed_message_or_none(
    adapter: DiscordAdapter, discord_server: FakeDiscord
) -> None:
    me = int(discord_server.bot["id"])

    @settings(HOSTILE, max_examples=300)  # no I/O per example: cheap
    @given(payload=payloads(discord_server))
    def check(payload: Json) -> None:
        try:
            message = sdk_message(adapter, payload)
        except (KeyError, TypeError, ValueError):
            reject()  # discord.py itself refuses it: its gateway never dispatches it
        incoming = incoming_message(message, me)
        if incoming is not None:
            assert_well_formed(incoming, "discord")
            assert incoming.channel_user_id == payload["author"]["id"]
            assert incoming.platform_message_id == payload["id"]

    check()


HOSTILE_CONTENT = [
    "\x00",
    "a\x00b",
    "\U0010ffff\ufeff\u200b",  # no lone surrogates: Discord's JSON is valid UTF-8
    "🎉" * 1000,
    "x" * 2000,
    "'; DROP TABLE messages; --",
    "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
    "\u202eevil\u202c",
    "   ",
]


async def test_hostile_messages_through_the_gateway_are_answered_or_refused(
    adapter: DiscordAdapter, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    """Valid payloads with hostile content and names: the connection survives each one,
    and Postgres holds what the service accepted."""
    dispatcher = adapter.dispatcher
    assert isinstance(dispatcher, RecordingDispatcher)
    sent: list[Json] = []
    for content in HOSTILE_CONTENT:
        author = user(f"{content[:20]}\x00name", user_id=snowflake())
        payload = discord_server.message(author, content)
        await discord_server.push_message(payload)
        sent.append(payload)
    probe = discord_server.message(user("probe"), "still there?")
    await discord_server.push_message(probe)
    # Each message is a DM of its own: all of them answered is when every DM has a post.
    everyone = [*sent, probe]
    await discord_server.wait_for(
        lambda: all(discord_server.posts(p["channel_id"]) for p in everyone), 15
    )

    assert adapter.connected and discord_server.violations == []
    assert sorted(m.platform_message_id or "" for m in dispatcher.seen) == sorted(
        p["id"] for p in everyone
    )
    for payload in sent:
        rows = [(r.role, r.content) for r in await messages_of(engine, payload["author"]["id"])]
        cleaned = documented_cleaning(payload["content"])
        assert [role for role, _ in rows] == (["user", "assistant"] if cleaned else [])
        assert [text for role, text in rows if role == "user"] == ([cleaned] if cleaned else [])
    errors = dispatcher.metrics.registry.get_sample_value(
        "bot_adapter_errors_total", {"channel": "discord"}
    )
    assert not errors
