"""Bad input gets a clear answer and changes nothing else (invariant 6)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import IncomingMessage, ReplyKind
from bot.errors import InvalidInput
from bot.service import ConversationService
from bot.validation import check_user_id, clean_text, clean_username
from tests.support import execute, fetch, messages_of, msg, new_user


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\x00\x00", "\x07\x1b"])
async def test_empty_text_is_refused_and_not_stored(
    service: ConversationService, engine: AsyncEngine, text: str
) -> None:
    user = new_user()
    reply = await service.handle(msg(user, text))
    assert reply.kind is ReplyKind.INVALID and "empty" in (reply.text or "")
    assert await messages_of(engine, user) == []


async def test_oversized_text_is_refused_not_truncated(
    make_service: object, engine: AsyncEngine
) -> None:
    service = await make_service(max_message_chars=100)  # type: ignore[operator]
    user = new_user()
    reply = await service.handle(msg(user, "x" * 101))
    assert reply.kind is ReplyKind.INVALID
    assert "101 characters" in (reply.text or "") and "100" in (reply.text or "")
    assert await messages_of(engine, user) == []
    ok = await service.handle(msg(user, "x" * 100))
    assert ok.kind is ReplyKind.ANSWER


async def test_nul_bytes_and_lone_surrogates_are_cleaned(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    reply = await service.handle(msg(user, "he\x00llo \ud800 world"))
    assert reply.kind is ReplyKind.ANSWER
    rows = await messages_of(engine, user)
    assert rows[0].content == "hello \ufffd world"


@pytest.mark.parametrize(
    "text",
    [
        "'; DROP TABLE messages; --",
        "Robert'); DELETE FROM users WHERE ('1'='1",
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
        "{user_id} %s %(x)s $1 :param \\ \" '",
        "emoji 🎉 and RTL \u202e text",
    ],
)
async def test_hostile_looking_text_is_stored_verbatim(
    service: ConversationService, engine: AsyncEngine, text: str
) -> None:
    user = new_user()
    reply = await service.handle(msg(user, text))
    assert reply.kind is ReplyKind.ANSWER
    rows = await messages_of(engine, user)
    assert rows[0].content == text.strip()
    follow = await service.handle(msg(user, "again"))  # the cached context still decodes
    assert "2 earlier messages" in (follow.text or "")


def test_clean_text_keeps_newlines_and_tabs() -> None:
    assert clean_text(" a\n\tb\r\n ", 10) == "a\n\tb"
    with pytest.raises(InvalidInput):
        clean_text("abc", 2)


async def test_commands(service: ConversationService, engine: AsyncEngine) -> None:
    user = new_user()
    help_reply = await service.handle(msg(user, "/help"))
    assert all(c in (help_reply.text or "") for c in ("/reset", "/model", "/history"))
    unknown = await service.handle(msg(user, "/frobnicate now"))
    assert unknown.kind is ReplyKind.COMMAND and "Unknown command /frobnicate" in (
        unknown.text or ""
    )
    assert (
        await service.handle(msg(user, "/history"))
    ).text == "No messages in this conversation yet."
    first = await service.handle(msg(user, "one"))
    await service.handle(msg(user, "two"))
    history = await service.handle(msg(user, "/history 1"))
    assert "you: two" in (history.text or "") and "you: one" not in (history.text or "")
    bad = await service.handle(msg(user, "/history lots"))
    assert bad.kind is ReplyKind.INVALID
    assert (await service.handle(msg(user, "/model bad name!"))).kind is ReplyKind.INVALID
    reset = await service.handle(msg(user, "/reset"))
    assert reset.conversation_id != first.conversation_id
    after = await service.handle(msg(user, "fresh"))
    assert after.conversation_id == reset.conversation_id
    assert "0 earlier messages" in (after.text or "")
    assert (await service.handle(msg(user, "/model@somebot"))).kind is ReplyKind.COMMAND
    assert len(await messages_of(engine, user)) == 6  # commands are not stored


async def test_an_over_long_user_id_is_refused_and_nothing_stored(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = "u" * 300  # users.channel_user_id is VARCHAR(255)

    reply = await service.handle(msg(user, "hello"))

    assert reply.kind is ReplyKind.INVALID
    assert reply.text == (
        "I can't answer messages from this account: its user id is 300 characters long, "
        "and the limit is 255."
    )
    assert await fetch(engine, "SELECT 1 FROM users WHERE channel_user_id LIKE 'uuuu%'") == []
    assert service.stats["store_failed"] == 0 and service.stats["invalid"] == 1
    fits = "u" * 255
    assert (await service.handle(msg(fits, "hello"))).kind is ReplyKind.ANSWER
    await execute(engine, "DELETE FROM users WHERE channel_user_id = :u", u=fits)


async def test_an_over_long_display_name_is_cut_not_refused(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    message = IncomingMessage("console", user, "hi", username="Ω" * 300 + "\x00")

    reply = await service.handle(message)

    assert reply.kind is ReplyKind.ANSWER
    rows = await fetch(engine, "SELECT username FROM users WHERE channel_user_id = :u", u=user)
    assert rows[0].username == "Ω" * 255


def test_user_ids_are_checked_and_display_names_cleaned() -> None:
    assert check_user_id("U024BE7LH") == "U024BE7LH"
    for bad in ("", "  ", "a\x00b", "\ud800", "x" * 256):
        with pytest.raises(InvalidInput):
            check_user_id(bad)
    assert clean_username(None) is None
    assert clean_username(" \x07 ") is None
    assert clean_username(" Ada\x00 ") == "Ada"
