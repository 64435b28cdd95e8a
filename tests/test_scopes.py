"""Conversations belong to the place where they happen (DESIGN.md, invariant 8): nothing
said in one scope reaches the context, the history or a reply of another, with Redis
warm, after a flush, and across /reset. Through the real service, real Postgres and
Redis; the adapters' own tests show the same through each platform's SDK."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ChatKind, IncomingMessage, ReplyKind
from bot.service import ConversationService
from tests.support import CountingResponder, ServiceFactory, fetch, flush_cache, new_user

GROUP, OTHER_GROUP = "-1001", "-1002"


@dataclass(frozen=True)
class Place:
    kind: ChatKind = ChatKind.PRIVATE
    chat: str | None = None
    thread: str | None = None


DM = Place()
PLACES = {
    "dm": DM,
    "group": Place(ChatKind.GROUP, GROUP),
    "other": Place(ChatKind.GROUP, OTHER_GROUP),
    "topic1": Place(ChatKind.THREAD, GROUP, "11"),
    "topic2": Place(ChatKind.THREAD, GROUP, "12"),
}


def say(user: str, text: str, place: Place = DM) -> IncomingMessage:
    return IncomingMessage(
        "telegram", user, text, username=user, platform_message_id=uuid.uuid4().hex,
        chat_id=place.chat or user, thread_id=place.thread, chat_kind=place.kind,
    )  # fmt: skip


def seen_by_responder(responder: CountingResponder, text: str) -> str:
    """Everything the responder was given when it answered `text`."""
    [request] = [r for r in responder.calls if r.text == text]
    return " ".join([request.text, *(m.content for m in request.context)])


async def test_each_place_has_its_own_conversation_warm_and_after_a_flush(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    responder = CountingResponder()
    service = await make_service(responder=responder)
    alice = new_user()
    where = PLACES

    for round_ in ("first", "second"):
        for name, place in where.items():
            reply = await service.handle(say(alice, f"{round_}-{name}-marker", place))
            assert reply.kind is ReplyKind.ANSWER
        if round_ == "first":
            assert await flush_cache(service) > 0  # the second round reads Postgres by scope

    for name in where:
        seen = seen_by_responder(responder, f"second-{name}-marker")
        assert f"first-{name}-marker" in seen  # its own earlier message: the same conversation
        others = [other for other in where if other != name]
        assert not any(f"-{other}-marker" in seen for other in others), (name, seen)
    rows = await fetch(
        engine,
        "SELECT c.scope FROM conversations c JOIN users u ON u.id = c.user_id "
        "WHERE u.channel_user_id = :u AND c.is_active ORDER BY 1",
        u=alice,
    )
    assert [r.scope for r in rows] == sorted(
        ["dm", "chat:-1001", "chat:-1002", "chat:-1001:thread:11", "chat:-1001:thread:12"]
    )


async def test_reset_and_history_act_on_their_own_place_only(
    service: ConversationService,
) -> None:
    bob, group = new_user(), PLACES["group"]
    await service.handle(say(bob, "private one"))
    await service.handle(say(bob, "group one", group))

    history = await service.handle(say(bob, "/history", group))
    reset = await service.handle(say(bob, "/reset", group))
    after_reset = await service.handle(say(bob, "group two", group))
    private = await service.handle(say(bob, "private two"))

    assert "group one" in (history.text or "") and "private one" not in (history.text or "")
    assert reset.kind is ReplyKind.COMMAND
    assert "0 earlier messages" in (after_reset.text or "")  # the group starts afresh
    assert "2 earlier messages" in (private.text or "")  # the DM is untouched
    assert private.conversation_id != after_reset.conversation_id


async def test_two_members_of_a_group_each_have_their_own_conversation(
    make_service: ServiceFactory,
) -> None:
    responder = CountingResponder()
    service = await make_service(responder=responder)
    carol, dave = new_user(), new_user()
    group = Place(ChatKind.GROUP, f"-{uuid.uuid4().int % 10**12}")

    first = await service.handle(say(carol, "carol-marker", group))
    second = await service.handle(say(dave, "dave-asks", group))

    assert first.conversation_id != second.conversation_id
    assert "carol-marker" not in seen_by_responder(responder, "dave-asks")


async def test_a_group_message_without_a_chat_is_refused(service: ConversationService) -> None:
    nowhere = IncomingMessage("telegram", new_user(), "hi", chat_kind=ChatKind.GROUP)
    too_long = say(new_user(), "hi", Place(ChatKind.THREAD, "-1", "9" * 200))

    assert (await service.handle(nowhere)).kind is ReplyKind.INVALID
    assert (await service.handle(too_long)).kind is ReplyKind.INVALID
