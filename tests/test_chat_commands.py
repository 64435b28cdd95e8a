"""/config and /model in groups and threads: anyone may look, only those the platform
calls admins may change; a platform that cannot answer, or answers nonsense, refuses.
(Each adapter's own tests ask the real platform APIs; here the service's side.)"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from bot.commands.context import NOT_ALLOWED, NOT_CHECKED
from bot.domain import ChatKind, IncomingMessage, ReplyKind
from bot.service import ConversationService
from tests.support import CountingResponder, ServiceFactory, new_user

ADMIN = "admin-" + uuid.uuid4().hex[:6]


def in_group(user: str, text: str, chat: str, thread: str | None = None) -> IncomingMessage:
    return IncomingMessage(
        "telegram", user, text, platform_message_id=uuid.uuid4().hex, chat_id=chat,
        thread_id=thread, chat_kind=ChatKind.THREAD if thread else ChatKind.GROUP,
    )  # fmt: skip


async def only_the_admin(message: IncomingMessage) -> bool:
    return message.channel_user_id == ADMIN


async def platform_down(message: IncomingMessage) -> bool:
    raise ConnectionError("the platform did not answer")


async def never_answers(message: IncomingMessage) -> bool:
    await asyncio.Event().wait()  # a platform call that hangs
    return True


async def nonsense(message: IncomingMessage) -> bool:
    return "yes"  # type: ignore[return-value]  # an answer that is no answer


@pytest.fixture
async def group_service(make_service: ServiceFactory) -> ConversationService:
    service = await make_service(responder=CountingResponder())
    service.allow_admins("telegram", only_the_admin)
    return service


def new_chat() -> str:
    return f"-100{uuid.uuid4().int % 10**9}"


async def test_an_admin_configures_the_chat_and_everyone_there_follows(
    group_service: ConversationService,
) -> None:
    chat, member = new_chat(), new_user()
    done = await group_service.handle(
        in_group(ADMIN, '/config set default_model=chat-model system_prompt="Be brief."', chat)
    )
    shown = await group_service.handle(in_group(member, "/config", chat))
    answer = await group_service.handle(in_group(member, "hello", chat))

    assert done.kind is ReplyKind.COMMAND and "default_model=chat-model" in (done.text or "")
    assert "model: chat-model" in (shown.text or "")
    assert answer.model == "chat-model"
    calls = group_service.responder.calls  # type: ignore[attr-defined]
    assert calls[-1].channel_settings == {"system_prompt": "Be brief."}


async def test_a_member_may_look_but_not_change(group_service: ConversationService) -> None:
    chat, member = new_chat(), new_user()
    refused = await group_service.handle(in_group(member, "/config set muted=true", chat))
    model = await group_service.handle(in_group(member, "/model other-model", chat))
    after = await group_service.handle(in_group(member, "still answered?", chat))

    assert refused.kind is ReplyKind.INVALID and refused.text == NOT_ALLOWED
    assert model.kind is ReplyKind.INVALID and "admins" in (model.text or "")
    assert after.kind is ReplyKind.ANSWER and after.model == group_service.settings.default_model


async def test_an_admin_pins_the_model_of_a_thread_only(
    group_service: ConversationService,
) -> None:
    chat = new_chat()
    pinned = await group_service.handle(in_group(ADMIN, "/model thread-model", chat, "3"))
    in_thread = await group_service.handle(in_group(ADMIN, "hi", chat, "3"))
    in_chat = await group_service.handle(in_group(ADMIN, "hi", chat))
    private = await group_service.handle(
        IncomingMessage("telegram", ADMIN, "hi", platform_message_id=uuid.uuid4().hex)
    )

    assert pinned.kind is ReplyKind.COMMAND and in_thread.model == "thread-model"
    assert in_chat.model == private.model == group_service.settings.default_model


@pytest.mark.parametrize("check", [platform_down, nonsense, never_answers])
async def test_a_platform_that_cannot_tell_refuses_and_says_why_in_the_log(
    make_service: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    check: object,
) -> None:
    monkeypatch.setattr("bot.service.ADMIN_CHECK_SECONDS", 0.2)
    service = await make_service()
    service.allow_admins("telegram", check)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="bot.service")
    chat = new_chat()

    refused = await service.handle(in_group(ADMIN, "/config set muted=true", chat))
    after = await service.handle(in_group(ADMIN, "hello", chat))

    assert refused.kind is ReplyKind.INVALID and after.kind is ReplyKind.ANSWER  # not muted
    assert refused.text == NOT_CHECKED  # not "you are no admin": the platform was silent
    told = {platform_down: "ConnectionError", nonsense: "was no yes or no"}.get(
        check,
        "TimeoutError",  # type: ignore[call-overload]
    )
    assert "refused" in caplog.text and told in caplog.text


async def test_bad_settings_are_refused_with_the_reason(group_service: ConversationService) -> None:
    chat = new_chat()
    bad = await group_service.handle(in_group(ADMIN, "/config set temperature=9", chat))
    unknown = await group_service.handle(in_group(ADMIN, "/config unset colour", chat))
    private = await group_service.handle(
        IncomingMessage("telegram", ADMIN, "/config", platform_message_id=uuid.uuid4().hex)
    )

    assert bad.kind is ReplyKind.INVALID and "temperature must be from 0 to 2" in (bad.text or "")
    assert unknown.kind is ReplyKind.INVALID and "unknown key 'colour'" in (unknown.text or "")
    assert private.kind is ReplyKind.INVALID and "private chat" in (private.text or "")
