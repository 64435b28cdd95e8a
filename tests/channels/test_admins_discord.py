"""Who may configure a Discord channel or thread: the adapter asks Discord for the writer's
member object (GET /guilds/{guild_id}/members/{user_id}) through the real discord.py code,
against the local Discord, for the real service, and weighs it against the guild's roles
and the channel's overwrites from GUILD_CREATE. Manage Channels or Manage Server there
(Administrator and the owner have both) may; everyone else is refused, every failed or
malformed answer is refused as not checked, and nothing changes in the chat's settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.channels.discord import DiscordAdapter, is_admin
from bot.channels.dispatch import Dispatcher
from bot.channels.registry import discord_options
from bot.commands.context import NOT_ALLOWED, NOT_CHECKED
from bot.domain import ChatKind, IncomingMessage
from bot.emulators.discord_api import (
    ADMINISTRATOR,
    ERROR_UNKNOWN_MEMBER,
    MANAGE_CHANNELS,
    MANAGE_GUILD,
    SEND_MESSAGES,
    TOKEN,
    FakeDiscord,
    Json,
    user,
)
from bot.metrics import Metrics
from bot.service import ConversationService
from tests.support import ServiceFactory

pytestmark = pytest.mark.timeout(30)

SET = "/config set temperature=0.2"
SAVED = "Saved for this chat: temperature=0.2."
SAVED_IN_THREAD = "Saved for this thread: temperature=0.2."
ADMIN_CHECK_SECONDS = 2.0  # past discord.py's first retry of a 502 (1 s), before its second
# The guild's roles: what each may do server-wide, and what the text channel's overwrites
# (which its threads follow) change of it.
ROLES = {
    "talker": SEND_MESSAGES,
    "channel manager": MANAGE_CHANNELS,
    "server manager": MANAGE_GUILD,
    "administrator": ADMINISTRATOR,
    "manager here": 0,  # gains Manage Channels in the text channel only
    "manager elsewhere": MANAGE_CHANNELS,  # loses it in the text channel
}


@pytest.fixture
def roles(discord_server: FakeDiscord) -> dict[str, str]:
    """The roles above in the guild (before the bot connects): name → id."""
    ids = {name: discord_server.add_role(name, bits) for name, bits in ROLES.items()}
    discord_server.overwrite(ids["manager here"], allow=MANAGE_CHANNELS)
    discord_server.overwrite(ids["manager elsewhere"], deny=MANAGE_CHANNELS)
    return ids


@pytest.fixture
async def bot(
    discord_server: FakeDiscord, roles: dict[str, str], make_service: ServiceFactory
) -> AsyncIterator[ConversationService]:
    """The adapter on the local Discord, its service answering with echo."""
    service = await make_service(
        discord_bot_token=TOKEN, discord_api_base_url=discord_server.api_url
    )
    adapter = DiscordAdapter(
        discord_options(service.settings),
        Dispatcher(service, Metrics()),
        guild_ready_timeout=0.2,
        admin_check_timeout=ADMIN_CHECK_SECONDS,
    )
    run = asyncio.create_task(adapter.run())
    await discord_server.wait_for(lambda: adapter.connected or run.done(), 12)
    assert adapter.connected
    yield service
    await adapter.stop()
    await asyncio.wait({run}, timeout=10)
    assert run.done() and run.exception() is None
    assert discord_server.violations == []


def member_with(discord_server: FakeDiscord, roles: dict[str, str], *names: str) -> Json:
    """A new member of the guild with the roles named."""
    person = user("someone")
    discord_server.give_roles(person, *(roles[name] for name in names))
    return person


async def ask(
    discord_server: FakeDiscord, sender: Json, text: str, place: str | None = None
) -> str:
    """`sender` says `text` to the bot (by mention) in the text channel, or in `place` (a
    thread of it); the bot's answer."""
    me = discord_server.bot
    channel = place or discord_server.channel_id
    said = f"<@{me['id']}> {text}"
    sent = discord_server.message(sender, said, guild=True, channel_id=channel, mentions=(me,))
    before = len(discord_server.posts(channel))
    await discord_server.push_message(sent)
    await discord_server.wait_for(lambda: len(discord_server.posts(channel)) > before, 15)
    return str(discord_server.posts(channel)[-1]["content"])


def fetches(discord_server: FakeDiscord, person: Json) -> list[int]:
    """The statuses of the member fetches about `person`."""
    return [c.status for c in discord_server.calls_to("GET", discord_server.member_path(person))]


async def settings_of(
    service: ConversationService, server: FakeDiscord, thread: str = ""
) -> dict[str, Any] | None:
    """The settings stored for the text channel, or one of its threads; None: no row."""
    row = await service.store.chat_configs.row("discord", server.channel_id, thread)
    return None if row is None else dict(row.settings)


@pytest.mark.parametrize(
    "names",
    [
        ("channel manager",),
        ("server manager",),
        ("administrator",),
        ("manager here",),  # by the channel's overwrite
        ("talker", "administrator", "manager elsewhere"),  # Administrator overrides overwrites
    ],
    ids=" + ".join,
)
async def test_a_manager_configures_the_channel(
    bot: ConversationService,
    discord_server: FakeDiscord,
    roles: dict[str, str],
    names: tuple[str, ...],
) -> None:
    person = member_with(discord_server, roles, *names)

    assert await ask(discord_server, person, SET) == SAVED
    assert await settings_of(bot, discord_server) == {"temperature": 0.2}
    assert fetches(discord_server, person) == [200]


async def test_the_owner_configures_the_channel_without_a_role(
    bot: ConversationService, discord_server: FakeDiscord
) -> None:
    owner = discord_server.owner

    assert await ask(discord_server, owner, SET) == SAVED
    assert await settings_of(bot, discord_server) == {"temperature": 0.2}
    assert fetches(discord_server, owner) == [200]


@pytest.mark.parametrize(
    "names", [(), ("talker",), ("manager elsewhere",)], ids=lambda n: " + ".join(n) or "no role"
)
async def test_anyone_else_is_refused_and_nothing_changes(
    bot: ConversationService,
    discord_server: FakeDiscord,
    roles: dict[str, str],
    names: tuple[str, ...],
) -> None:
    member_with(discord_server, roles, "channel manager")  # the guild has one; not this person
    person = member_with(discord_server, roles, *names)

    assert await ask(discord_server, person, SET) == NOT_ALLOWED
    assert await ask(discord_server, person, "/config unset temperature") == NOT_ALLOWED
    assert "admins" in await ask(discord_server, person, "/model other-model")
    assert await settings_of(bot, discord_server) is None
    assert fetches(discord_server, person) == [200] * 3


async def test_the_member_is_fetched_fresh_each_time(
    bot: ConversationService, discord_server: FakeDiscord, roles: dict[str, str]
) -> None:
    person = member_with(discord_server, roles, "talker")
    assert await ask(discord_server, person, SET) == NOT_ALLOWED

    discord_server.give_roles(person, roles["channel manager"])  # no gateway event for it
    assert await ask(discord_server, person, SET) == SAVED
    discord_server.give_roles(person)
    assert await ask(discord_server, person, "/config unset temperature") == NOT_ALLOWED
    assert await settings_of(bot, discord_server) == {"temperature": 0.2}
    assert fetches(discord_server, person) == [200] * 3


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        ((404, "Unknown Member", ERROR_UNKNOWN_MEMBER), "PlatformRejected: Discord refused"),
        ((403, "Missing Access", 50001), "PlatformRejected: Discord refused"),
        ((503, "upstream connect error", 0), "PlatformUnavailable: Discord answered 503"),
        ((502, "Bad Gateway", 0), "PlatformUnavailable: no answer from Discord within 2 s"),
    ],
    ids=["404", "403", "503", "502"],
)
async def test_discord_failing_to_answer_is_not_checked_and_says_why_in_the_log(
    bot: ConversationService,
    discord_server: FakeDiscord,
    roles: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    error: tuple[int, str, int],
    logged: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    person = member_with(discord_server, roles, "administrator")  # were Discord to answer
    discord_server.member_error = error

    assert await ask(discord_server, person, SET) == NOT_CHECKED
    assert await settings_of(bot, discord_server) is None
    assert error[0] in fetches(discord_server, person)
    assert "refused" in caplog.text and logged in caplog.text
    assert TOKEN not in caplog.text


def _without(member: Json, key: str) -> Json:
    return {k: v for k, v in member.items() if k != key}


# Malformed answers, each made of the member object of someone with every managing role:
# read as discord.py reads them, several would be a yes.
MALFORMED: dict[str, Callable[[Json, FakeDiscord], Any]] = {
    "no roles": lambda m, _: _without(m, "roles"),
    "roles an object": lambda m, _: {**m, "roles": dict.fromkeys(m["roles"], True)},
    "roles one id": lambda m, _: {**m, "roles": m["roles"][0]},
    "roles a number": lambda m, _: {**m, "roles": 5},
    "role ids numbers": lambda m, _: {**m, "roles": [int(r) for r in m["roles"]]},
    "a role named": lambda m, _: {**m, "roles": [*m["roles"], "administrator"]},
    "a null role": lambda m, _: {**m, "roles": [*m["roles"], None]},
    "no user": lambda m, _: _without(m, "user"),
    "user a string": lambda m, _: {**m, "user": m["user"]["id"]},
    "user id a number": lambda m, _: {**m, "user": {**m["user"], "id": int(m["user"]["id"])}},
    "user without id": lambda m, _: {**m, "user": _without(m["user"], "id")},
    "another user": lambda m, server: server.member(server.owner),  # the owner's answer
    "no flags": lambda m, _: _without(m, "flags"),
    "joined_at no date": lambda m, _: {**m, "joined_at": "yesterday"},
    "empty": lambda m, _: {},
    "a string": lambda m, _: "member",
    "true": lambda m, _: True,
    "a list": lambda m, _: [m],
    "null": lambda m, _: None,
}


@pytest.mark.parametrize("malformed", MALFORMED)
async def test_a_malformed_answer_is_not_checked_and_says_why_in_the_log(
    bot: ConversationService,
    discord_server: FakeDiscord,
    roles: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    malformed: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    person = member_with(discord_server, roles, *roles)
    discord_server.member_answer = MALFORMED[malformed](
        discord_server.member(person), discord_server
    )

    assert await ask(discord_server, person, SET) == NOT_CHECKED
    assert await settings_of(bot, discord_server) is None
    assert fetches(discord_server, person) == [200]
    assert "refused" in caplog.text and "PlatformUnavailable" in caplog.text


async def test_in_a_thread_the_parent_channels_permissions_count(
    bot: ConversationService, discord_server: FakeDiscord, roles: dict[str, str]
) -> None:
    thread = discord_server.thread_id
    talker = member_with(discord_server, roles, "talker")
    elsewhere = member_with(discord_server, roles, "manager elsewhere")
    here = member_with(discord_server, roles, "manager here")  # the parent's overwrite

    assert await ask(discord_server, talker, SET, thread) == NOT_ALLOWED
    assert await ask(discord_server, elsewhere, SET, thread) == NOT_ALLOWED
    assert await ask(discord_server, here, SET, thread) == SAVED_IN_THREAD
    assert await settings_of(bot, discord_server, thread) == {"temperature": 0.2}
    assert await settings_of(bot, discord_server) is None
    assert await settings_of(bot, discord_server, discord_server.other_thread_id) is None
    asked = [c.path for c in discord_server.calls if c.path.startswith("/guilds/")]
    assert asked == [discord_server.member_path(p) for p in (talker, elsewhere, here)]


async def test_a_channel_this_shard_does_not_know_is_not_checked(
    bot: ConversationService,
    discord_server: FakeDiscord,
    roles: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    person = member_with(discord_server, roles, "administrator")
    unknown = "1" + discord_server.channel_id  # created after GUILD_CREATE, its event lost

    assert await ask(discord_server, person, SET, unknown) == NOT_CHECKED
    assert await bot.store.chat_configs.row("discord", unknown) is None
    assert fetches(discord_server, person) == []
    assert "is not known" in caplog.text


async def test_nobody_administers_a_dm() -> None:
    dm = IncomingMessage(channel="discord", channel_user_id="1", text=SET, chat_id="2")
    assert dm.chat_kind is ChatKind.PRIVATE
    assert await is_admin(None, dm) is False  # type: ignore[arg-type] # asks nobody
