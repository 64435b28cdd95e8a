"""Who may configure a Telegram group: the adapter asks Telegram (getChatMember) through
the real python-telegram-bot code, against the local Bot API, for the real service.
Owners ("creator") and administrators may; everyone else, and every failed or malformed
answer, is refused, and nothing changes in the chat's settings."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.channels.dispatch import Dispatcher
from bot.channels.registry import telegram_options
from bot.channels.telegram import TelegramAdapter
from bot.commands.context import NOT_ALLOWED, NOT_CHECKED
from bot.emulators.telegram_api import (
    BOT_USERNAME,
    MEMBER_KINDS,
    TOKEN,
    FakeBotApi,
    Spec,
    chat_member,
    entities,
    group_chat,
    message,
    update,
    user,
)
from bot.metrics import Metrics
from bot.service import ConversationService
from tests.support import ServiceFactory, until

pytestmark = pytest.mark.timeout(15)

SET = "/config set temperature=0.2"
SAVED = "Saved for this chat: temperature=0.2."
TOPIC = 71
_ids = itertools.count(random.randrange(10**9, 2 * 10**9))


@pytest.fixture
async def bot(
    telegram: FakeBotApi, make_service: ServiceFactory
) -> AsyncIterator[ConversationService]:
    """A polling adapter on the fake Bot API, its service answering with echo."""
    service = await make_service(telegram_bot_token=TOKEN, telegram_api_base_url=telegram.base_url)
    adapter = TelegramAdapter(telegram_options(service.settings), Dispatcher(service, Metrics()))
    run = asyncio.create_task(adapter.run())
    await until(lambda: adapter.connected or run.done())
    yield service
    await asyncio.wait_for(adapter.stop(), 10)
    await asyncio.wait_for(run, 10)


@pytest.fixture
def group() -> dict[str, Any]:
    """A supergroup no other test of this run uses (the database outlives a test)."""
    return group_chat(-(10**12) - next(_ids))


@pytest.fixture
def person() -> dict[str, Any]:
    return user(next(_ids))


async def ask(
    telegram: FakeBotApi,
    chat: dict[str, Any],
    sender: dict[str, Any],
    text: str,
    topic: int | None = None,
) -> str:
    """`sender` says `text` to the bot (by @mention) in `chat`; the bot's answer."""
    said = f"@{BOT_USERNAME} {text}"
    extra: dict[str, Any] = {"entities": entities(said, "mention", f"@{BOT_USERNAME}")}
    if topic is not None:
        extra |= {"message_thread_id": topic, "is_topic_message": True}
    before = len(telegram.sent)
    await telegram.push(update(telegram, message(telegram, chat, sender, said, **extra)))
    await telegram.wait_for(lambda: len(telegram.sent) > before)
    return str(telegram.sent[-1]["text"])


def asked_about(telegram: FakeBotApi) -> list[tuple[Any, Any]]:
    """(chat_id, user_id) of each getChatMember request."""
    return [(c.params["chat_id"], c.params["user_id"]) for c in telegram.calls_of("getChatMember")]


@pytest.mark.parametrize("status", ["creator", "administrator"])
async def test_an_admin_configures_the_group(
    bot: ConversationService,
    telegram: FakeBotApi,
    group: dict[str, Any],
    person: dict[str, Any],
    status: str,
) -> None:
    telegram.set_status(group, person, status)

    assert await ask(telegram, group, person, SET) == SAVED
    row = await bot.store.chat_configs.row("telegram", str(group["id"]))
    assert row is not None and row.settings == {"temperature": 0.2}
    assert asked_about(telegram) == [(group["id"], person["id"])]


@pytest.mark.parametrize("status", ["member", "restricted", "left", "kicked"])
async def test_anyone_else_is_refused_and_nothing_changes(
    bot: ConversationService,
    telegram: FakeBotApi,
    group: dict[str, Any],
    person: dict[str, Any],
    status: str,
) -> None:
    admin = user(next(_ids))
    telegram.set_status(group, admin, "administrator")  # the chat has one; not this person
    telegram.set_status(group, person, status)

    assert await ask(telegram, group, person, SET) == NOT_ALLOWED
    assert await ask(telegram, group, person, "/config unset temperature") == NOT_ALLOWED
    assert "admins" in await ask(telegram, group, person, "/model other-model")
    assert await bot.store.chat_configs.row("telegram", str(group["id"])) is None
    assert asked_about(telegram) == [(group["id"], person["id"])] * 3


@pytest.mark.parametrize(
    ("status", "description", "logged"),
    [
        (400, "Bad Request: chat not found", "PlatformRejected"),
        (403, "Forbidden: bot was kicked from the supergroup chat", "PlatformRejected"),
        (502, "Bad Gateway", "PlatformUnavailable"),
    ],
)
async def test_telegram_failing_to_answer_refuses_and_says_why_in_the_log(
    bot: ConversationService,
    telegram: FakeBotApi,
    group: dict[str, Any],
    person: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    status: int,
    description: str,
    logged: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    telegram.set_status(group, person, "creator")  # what it would say, could it answer
    telegram.member_error = (status, description)

    assert await ask(telegram, group, person, SET) == NOT_CHECKED
    assert await bot.store.chat_configs.row("telegram", str(group["id"])) is None
    assert telegram.calls_of("getChatMember", status=status) != []
    assert "refused" in caplog.text and logged in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    "answer",
    [
        {"user": {"id": 1, "is_bot": False, "first_name": "A"}},  # no status
        {"status": "creator"},  # no user, no is_anonymous
        {"status": 5, "user": {"id": 1, "is_bot": False, "first_name": "A"}},
        {"status": ["administrator"], "user": {"id": 1, "is_bot": False, "first_name": "A"}},
        {},
        "administrator",
        True,
        ["creator"],
        None,
    ],
    ids=repr,
)
async def test_a_malformed_answer_refuses_and_says_why_in_the_log(
    bot: ConversationService,
    telegram: FakeBotApi,
    group: dict[str, Any],
    person: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    answer: Any,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    telegram.set_status(group, person, "creator")
    telegram.member_answer = answer

    assert await ask(telegram, group, person, SET) == NOT_CHECKED
    assert await bot.store.chat_configs.row("telegram", str(group["id"])) is None
    assert telegram.calls_of("getChatMember") != []
    assert "refused" in caplog.text and "PlatformUnavailable" in caplog.text


async def test_a_status_telegram_may_add_one_day_is_no_admin(
    bot: ConversationService,
    telegram: FakeBotApi,
    group: dict[str, Any],
    person: dict[str, Any],
) -> None:
    telegram.member_answer = {"status": "superuser", "user": person}  # not in the spec

    assert await ask(telegram, group, person, SET) == NOT_ALLOWED
    assert await bot.store.chat_configs.row("telegram", str(group["id"])) is None


async def test_in_a_forum_topic_telegram_is_asked_about_the_group(
    bot: ConversationService,
    telegram: FakeBotApi,
    group: dict[str, Any],
    person: dict[str, Any],
) -> None:
    member = user(next(_ids))
    telegram.set_status(group, person, "administrator")

    assert await ask(telegram, group, member, SET, TOPIC) == NOT_ALLOWED
    assert await ask(telegram, group, person, SET, TOPIC) == SAVED.replace("chat", "thread")
    row = await bot.store.chat_configs.row("telegram", str(group["id"]), str(TOPIC))
    assert row is not None and row.settings == {"temperature": 0.2}
    assert await bot.store.chat_configs.row("telegram", str(group["id"])) is None
    assert asked_about(telegram) == [(group["id"], member["id"]), (group["id"], person["id"])]


def test_the_spec_checker_knows_the_kinds_of_chat_member() -> None:
    spec, someone = Spec(), user(1)
    for status in MEMBER_KINDS:
        assert spec.check_object("ChatMember", chat_member(spec, status, someone)) == []
    assert spec.check_object("ChatMember", {"status": "member", "user": someone}) == []
    # An administrator without its rights is none of the kinds; "left" is no "member".
    assert spec.check_object("ChatMember", {"status": "administrator", "user": someone}) != []
    assert spec.check_object("ChatMemberMember", {"status": "left", "user": someone}) == [
        "ChatMemberMember.status: 'left' is not 'member'"
    ]
