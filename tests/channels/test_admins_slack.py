"""Who may configure a Slack channel's thread: the adapter asks Slack (users.info) through
the real slack-bolt / slack_sdk code (Socket Mode), against the local Slack, for the real
service. Workspace admins and owners may; everyone else, a deleted account, and every
failed or malformed answer, is refused, and nothing changes in the thread's settings.

A mention in a channel starts a thread (the bot answers in it), so a channel's settings
are those of that thread; a mention in a thread configures the thread."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.channels import slack as slack_channel
from bot.channels.dispatch import Dispatcher
from bot.channels.registry import slack_options
from bot.channels.slack import SlackAdapter
from bot.commands.context import NOT_ALLOWED, NOT_CHECKED
from bot.domain import AdminCheck, ChatKind, IncomingMessage
from bot.emulators.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER_ID,
    FakeSlack,
    event_envelope,
)
from bot.metrics import Metrics
from bot.service import ConversationService
from tests.support import ServiceFactory, until

pytestmark = pytest.mark.timeout(20)

SET = "/config set temperature=0.2"
SAVED = "Saved for this thread: temperature=0.2."
PLACES = ("channel", "thread")
UNAVAILABLE, REJECTED = "PlatformUnavailable", "PlatformRejected"  # as the service logs them
_ts = itertools.count(1)


class Recording(Dispatcher):
    """The real dispatcher, keeping the admin check an adapter gives the service."""

    def __init__(self, service: ConversationService) -> None:
        super().__init__(service, Metrics())
        self.checks: dict[str, AdminCheck] = {}

    def allow_admins(self, channel: str, check: AdminCheck) -> None:
        self.checks[channel] = check
        super().allow_admins(channel, check)


@pytest.fixture
async def bot(slack: FakeSlack, make_service: ServiceFactory) -> AsyncIterator[Recording]:
    """A Socket Mode adapter on the local Slack, its service answering with echo."""
    service = await make_service(
        slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_api_base_url=slack.api_url
    )
    dispatcher = Recording(service)
    adapter = SlackAdapter(slack_options(service.settings), dispatcher)
    run = asyncio.create_task(adapter.run())
    await until(lambda: (adapter.connected and slack.socket_open) or run.done())
    yield dispatcher
    await adapter.stop()
    await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 5)


def slack_id(prefix: str) -> str:
    """An id no other test of this run uses (the database outlives a test)."""
    return prefix + uuid.uuid4().hex[:10].upper()


def ts() -> str:
    return f"{int(time.time())}.{next(_ts):06d}"


@pytest.fixture
def person() -> str:
    return slack_id("U")


@pytest.fixture
def channel() -> str:
    return slack_id("C")


@pytest.fixture(params=PLACES)
def thread(request: pytest.FixtureRequest) -> str | None:
    """Where the bot is mentioned: in the channel (None: each mention starts its own
    thread), or in a thread someone started there."""
    return None if request.param == "channel" else ts()


async def ask(
    slack: FakeSlack, person: str, text: str, channel: str, thread: str | None
) -> dict[str, Any]:
    """`person` mentions the bot with `text` in `channel` (in `thread`): the bot's answer,
    as posted (its channel, its thread_ts, its text)."""
    event = {"type": "app_mention", "channel": channel, "user": person,
             "text": f"<@{BOT_USER_ID}> {text}", "ts": ts()}  # fmt: skip
    if thread is not None:
        event["thread_ts"] = thread
    before = len(slack.posts)
    await slack.push(event_envelope(event))
    await until(lambda: len(slack.posts) > before, within=15)
    return slack.posts[-1]


async def refused_unchecked(
    service: ConversationService, answer: dict[str, Any], log: str, *logged: str
) -> None:
    """The change was refused because Slack could not say who may make it: the writer
    told so, nothing stored, and the refusal logged (with each of `logged`)."""
    assert answer["text"] == NOT_CHECKED
    assert await nothing_stored(service, answer)
    assert all(word in log for word in ("refused", *logged)), log


async def nothing_stored(service: ConversationService, *answers: dict[str, Any]) -> bool:
    """No settings were written for the threads of `answers`, nor for their channels."""
    rows = service.store.chat_configs
    for answer in answers:
        if await rows.row("slack", answer["channel"], answer["thread_ts"]) is not None:
            return False
        if await rows.row("slack", answer["channel"]) is not None:
            return False
    return True


@pytest.mark.parametrize(
    "flags",
    [
        {"is_admin": True},
        {"is_owner": True},
        {"is_admin": True, "is_owner": True, "is_primary_owner": True},
    ],
    ids=["admin", "owner", "primary owner"],
)
async def test_an_admin_or_owner_configures_the_thread(
    bot: Recording,
    slack: FakeSlack,
    person: str,
    channel: str,
    thread: str | None,
    flags: dict[str, bool],
) -> None:
    slack.set_flags(person, **flags)

    answer = await ask(slack, person, SET, channel, thread)

    assert answer["text"] == SAVED
    if thread is not None:
        assert answer["thread_ts"] == thread
    row = await bot.service.store.chat_configs.row("slack", channel, answer["thread_ts"])
    assert row is not None and row.settings == {"temperature": 0.2}
    assert await bot.service.store.chat_configs.row("slack", channel) is None
    assert set(slack.users_asked) == {person}  # the writer (and their display name), nobody else


@pytest.mark.parametrize(
    "flags",
    [{}, {"is_restricted": True}, {"is_restricted": True, "is_ultra_restricted": True}],
    ids=["member", "guest", "single-channel guest"],
)
async def test_anyone_else_is_refused_and_nothing_changes(
    bot: Recording,
    slack: FakeSlack,
    person: str,
    channel: str,
    thread: str | None,
    flags: dict[str, bool],
) -> None:
    slack.set_flags(slack_id("U"), is_admin=True)  # the workspace has one; not this person
    slack.set_flags(person, **flags)

    answers = [
        await ask(slack, person, SET, channel, thread),
        await ask(slack, person, "/config unset temperature", channel, thread),
        await ask(slack, person, "/model other-model", channel, thread),
    ]

    assert [a["text"] for a in answers[:2]] == [NOT_ALLOWED] * 2
    assert "admins" in answers[2]["text"]
    assert await nothing_stored(bot.service, *answers)
    assert set(slack.users_asked) == {person}


@pytest.mark.parametrize("flags", [{"is_admin": True}, {"is_owner": True}], ids=["admin", "owner"])
async def test_a_deleted_admin_is_refused(
    bot: Recording,
    slack: FakeSlack,
    person: str,
    channel: str,
    thread: str | None,
    flags: dict[str, bool],
) -> None:
    slack.set_flags(person, deleted=True, **flags)

    answer = await ask(slack, person, SET, channel, thread)

    assert answer["text"] == NOT_ALLOWED
    assert await nothing_stored(bot.service, answer)


async def test_flags_slack_leaves_out_are_false(
    bot: Recording, slack: FakeSlack, person: str, channel: str, thread: str | None
) -> None:
    user = slack.user_object(person)
    for flag in ("is_admin", "is_owner", "is_primary_owner", "deleted"):
        del user[flag]
    slack.users_info_answer = {"ok": True, "user": user}
    assert slack.spec.response_errors("users.info", slack.users_info_answer) == []  # valid

    answer = await ask(slack, person, SET, channel, thread)

    assert answer["text"] == NOT_ALLOWED
    assert await nothing_stored(bot.service, answer)


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        pytest.param((200, "user_not_found"), REJECTED, id="user_not_found"),
        pytest.param((200, "account_inactive"), REJECTED, id="account_inactive"),
        pytest.param((500, "internal_error"), UNAVAILABLE, id="500"),
        pytest.param((502, "bad_gateway"), UNAVAILABLE, id="502"),
        pytest.param((503, "service_unavailable"), UNAVAILABLE, id="503"),
        pytest.param((429, "ratelimited"), "PlatformRateLimited", id="429"),
    ],
)
async def test_slack_failing_to_answer_refuses_and_says_why_in_the_log(
    bot: Recording,
    slack: FakeSlack,
    person: str,
    channel: str,
    thread: str | None,
    caplog: pytest.LogCaptureFixture,
    error: tuple[int, str],
    logged: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    slack.set_flags(person, is_admin=True)  # what it would say, could it answer
    slack.users_info_error = error

    answer = await ask(slack, person, SET, channel, thread)

    await refused_unchecked(bot.service, answer, caplog.text, logged)
    assert person in slack.users_asked
    assert error[1] in caplog.text
    assert BOT_TOKEN not in caplog.text


@pytest.mark.parametrize("failure", ["unknown user", "down"])
async def test_an_unknown_user_or_slack_down_refuses(
    bot: Recording,
    slack: FakeSlack,
    person: str,
    channel: str,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    slack.set_flags(person, is_owner=True)
    if failure == "unknown user":
        slack.unknown_users.add(person)
    else:
        slack.users_info_down = True

    answer = await ask(slack, person, SET, channel, None)

    await refused_unchecked(bot.service, answer, caplog.text)


async def test_a_slow_answer_refuses(
    bot: Recording,
    slack: FakeSlack,
    person: str,
    channel: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    monkeypatch.setattr(slack_channel, "ADMIN_LOOKUP_TIMEOUT", 0.2)
    slack.set_flags(person, is_admin=True)
    slack.users_info_delay = 0.5

    answer = await ask(slack, person, SET, channel, None)

    await refused_unchecked(bot.service, answer, caplog.text, "PlatformUnavailable")


def _admin(**fields: Any) -> dict[str, Any]:
    """An admin's user object, with `fields` changed."""
    user = {"id": "U0ADMIN0001", "name": "admin", "is_bot": False, "is_app_user": False,
            "updated": 1_700_000_000, "profile": {"display_name": "Admin"},
            "deleted": False, "is_admin": True, "is_owner": False}  # fmt: skip
    return user | fields


def _ok_admin(**fields: Any) -> dict[str, Any]:
    """users.info's answer about an admin, with `fields` of the user changed."""
    return {"ok": True, "user": _admin(**fields)}


@pytest.mark.parametrize(
    ("answer", "logged"),
    [
        pytest.param(_ok_admin(is_admin="true"), UNAVAILABLE, id="is_admin 'true'"),
        pytest.param(_ok_admin(is_admin=False, is_owner=1), UNAVAILABLE, id="is_owner 1"),
        pytest.param(_ok_admin(is_admin=[True]), UNAVAILABLE, id="is_admin [true]"),
        pytest.param(_ok_admin(is_admin=None), UNAVAILABLE, id="is_admin null"),
        pytest.param(_ok_admin(deleted="false"), UNAVAILABLE, id="deleted 'false'"),
        pytest.param(_ok_admin(deleted=0), UNAVAILABLE, id="deleted 0"),
        pytest.param({"ok": True, "user": None}, UNAVAILABLE, id="user null"),
        pytest.param({"ok": True}, UNAVAILABLE, id="no user"),
        pytest.param({"ok": True, "user": "U0ADMIN0001"}, UNAVAILABLE, id="user a string"),
        pytest.param({"ok": True, "user": [_admin()]}, UNAVAILABLE, id="user a list"),
        pytest.param({"ok": "true", "user": _admin()}, UNAVAILABLE, id="ok 'true'"),
        pytest.param({"user": _admin()}, REJECTED, id="no ok"),  # the SDK: a refusal
        pytest.param([_ok_admin()], UNAVAILABLE, id="a list"),
        pytest.param("ok", UNAVAILABLE, id="a string"),
        pytest.param(True, UNAVAILABLE, id="true"),
        pytest.param(b'{"ok": true, "user": {"is_admin": true', REJECTED, id="cut short"),
    ],
)  # fmt: skip
async def test_a_malformed_answer_refuses_and_says_why_in_the_log(
    bot: Recording,
    slack: FakeSlack,
    person: str,
    channel: str,
    thread: str | None,
    caplog: pytest.LogCaptureFixture,
    answer: Any,
    logged: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.service")
    slack.set_flags(person, is_admin=True)
    slack.users_info_answer = answer

    reply = await ask(slack, person, SET, channel, thread)

    await refused_unchecked(bot.service, reply, caplog.text, logged)
    assert person in slack.users_asked


async def test_in_a_dm_nobody_is_an_admin_and_slack_is_not_asked(
    bot: Recording, slack: FakeSlack, person: str
) -> None:
    slack.set_flags(person, is_admin=True, is_owner=True)
    message = IncomingMessage(
        channel="slack", channel_user_id=person, text="/model other-model", chat_id="D0DMCHAN123"
    )
    assert message.chat_kind is ChatKind.PRIVATE

    assert await bot.checks["slack"](message) is False
    assert slack.users_asked == []


async def test_members_are_refused_and_admins_heard_in_one_thread(
    bot: Recording, slack: FakeSlack, person: str, channel: str
) -> None:
    member, thread = slack_id("U"), ts()
    slack.set_flags(person, is_admin=True)

    refused = await ask(slack, member, SET, channel, thread)
    saved = await ask(slack, person, "/config set temperature=0.7", channel, thread)
    after = await ask(slack, member, "/config unset temperature", channel, thread)

    assert [refused["text"], saved["text"], after["text"]] == [
        NOT_ALLOWED,
        "Saved for this thread: temperature=0.7.",
        NOT_ALLOWED,
    ]
    row = await bot.service.store.chat_configs.row("slack", channel, thread)
    assert row is not None and row.settings == {"temperature": 0.7}
    assert await bot.service.store.chat_configs.row("slack", channel) is None
