"""Any text from any user: the service answers clearly and stores exactly what it accepted.

Invariant 6 of DESIGN.md, as properties over arbitrary Unicode (control characters,
NUL, lone surrogates, bidi marks, emoji, texts around and far beyond
MAX_MESSAGE_CHARS) and arbitrary user ids and display names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import commands
from bot.domain import IncomingMessage, Reply, ReplyKind
from bot.service import ConversationService
from tests.hostile.checks import cached_context
from tests.hostile.strategies import (
    any_text,
    documented_cleaning,
    hostile_text,
    user_ids,
    usernames,
)
from tests.support import ServiceFactory, execute, fetch, handled, messages_of, new_user

pytestmark = pytest.mark.timeout(120)

LIMIT = 500  # MAX_MESSAGE_CHARS for these tests: "huge" texts stay cheap to generate
HOSTILE = settings.get_profile("hostile")
# Replies a user may get to a message no store or Redis failure got in the way of.
CLEAR_KINDS = {ReplyKind.ANSWER, ReplyKind.COMMAND, ReplyKind.INVALID}


@pytest.fixture
async def service(make_service: ServiceFactory) -> ConversationService:
    # A limit no example reaches: these tests are about the text, not the rate.
    return await make_service(max_message_chars=LIMIT, rate_limit_per_minute=100_000)


@pytest.fixture
async def default_service(make_service: ServiceFactory) -> ConversationService:
    """The default MAX_MESSAGE_CHARS: one service for all of a test's examples (a service
    per example kept a pooled connection each, up to Postgres' max_connections)."""
    return await make_service(rate_limit_per_minute=100_000)


def assert_clear(reply: Reply) -> None:
    assert reply.kind in CLEAR_KINDS, reply
    assert isinstance(reply.text, str) and reply.text.strip(), reply


@HOSTILE
@given(text=hostile_text(LIMIT))
async def test_any_text_is_answered_or_refused_and_stored_as_documented(
    service: ConversationService, engine: AsyncEngine, redis: Redis, text: str
) -> None:
    user = new_user()
    reply = await service.handle(IncomingMessage("console", user, text, username="hostile"))

    assert_clear(reply)
    stored = [(row.role, row.content) for row in await messages_of(engine, user)]
    cleaned = documented_cleaning(text)
    if not cleaned:
        assert reply.kind is ReplyKind.INVALID and "empty" in (reply.text or "")
        assert stored == []
    elif len(cleaned) > LIMIT:
        assert reply.kind is ReplyKind.INVALID
        assert f"{len(cleaned):,} characters" in (reply.text or "")
        assert f"{LIMIT:,}" in (reply.text or "")
        assert stored == []
    elif commands.parse(cleaned) is not None:
        assert reply.kind in (ReplyKind.COMMAND, ReplyKind.INVALID)
        assert stored == []  # commands are answered, never stored
    else:
        assert reply.kind is ReplyKind.ANSWER and reply.conversation_id is not None
        assert stored == [("user", cleaned), ("assistant", reply.text)]
        assert await cached_context(redis, service, reply.conversation_id) == stored[::-1]


@pytest.mark.parametrize("size", [8000, 8001, 1_000_000])
async def test_huge_texts_around_the_default_limit(
    make_service: ServiceFactory, engine: AsyncEngine, size: int
) -> None:
    service = await make_service()
    assert service.settings.max_message_chars == 8000
    user = new_user()
    text = "🎉" * size  # astral: one code point, two UTF-16 units, four UTF-8 bytes

    reply = await service.handle(IncomingMessage("console", user, f"\x00{text}\x00 "))

    stored = [row.content for row in await messages_of(engine, user) if row.role == "user"]
    if size <= 8000:
        assert reply.kind is ReplyKind.ANSWER and stored == [text]
    else:
        assert reply.kind is ReplyKind.INVALID and f"{size:,} characters" in (reply.text or "")
        assert stored == []


@HOSTILE
@given(
    command=st.sampled_from(["/history", "/model", "/reset", "/help", "/start", "/x"]),
    argument=st.one_of(
        st.text(max_size=12),
        st.sampled_from(["²", "٣", "0", "-1", "1e3", "9" * 5000, "default", "a" * 101]),
    ),
)
async def test_any_command_argument_gets_a_clear_answer(
    default_service: ConversationService, engine: AsyncEngine, command: str, argument: str
) -> None:
    # The default MAX_MESSAGE_CHARS, so that a 5000-digit argument reaches the command.
    user = new_user()
    message = IncomingMessage("console", user, f"{command} {argument}")
    reply = await default_service.handle(message)

    assert_clear(reply)
    assert reply.kind in (ReplyKind.COMMAND, ReplyKind.INVALID)
    assert await messages_of(engine, user) == []


def _id_is_storable(channel_user_id: str) -> bool:
    """docs/channels/input.md: 1-255 characters, not blank, no control cleaning removes."""
    return (
        len(channel_user_id) <= 255
        and bool(channel_user_id.strip())
        and not any(_cleaned_away(c) for c in channel_user_id)
    )


def _cleaned_away(character: str) -> bool:
    return documented_cleaning(f"a{character}a") != f"a{character}a"


@pytest.fixture
async def hostile_channel(engine: AsyncEngine) -> AsyncIterator[str]:
    """A channel name of the test's own: its users are deleted afterwards."""
    yield "hostile"
    await execute(engine, "DELETE FROM users WHERE channel_type = 'hostile'")


@HOSTILE
@given(channel_user_id=user_ids(), username=usernames())
async def test_any_user_id_and_name_is_stored_verbatim_or_refused(
    service: ConversationService,
    engine: AsyncEngine,
    hostile_channel: str,
    channel_user_id: str,
    username: str | None,
) -> None:
    before = await hostile_users(engine)
    reply = await service.handle(
        IncomingMessage(hostile_channel, channel_user_id, "hello", username=username)
    )

    assert_clear(reply)
    if not _id_is_storable(channel_user_id):
        assert reply.kind is ReplyKind.INVALID and "user id" in (reply.text or "")
        assert await hostile_users(engine) == before
        return
    assert reply.kind is ReplyKind.ANSWER
    after = await hostile_users(engine)
    assert after.keys() - before.keys() <= {channel_user_id}  # one user per platform id
    if channel_user_id not in before:  # hypothesis repeats some ids
        assert after[channel_user_id] == (documented_cleaning(username or "")[:255] or None)


async def hostile_users(engine: AsyncEngine) -> dict[str, str | None]:
    rows = await fetch(
        engine, "SELECT channel_user_id, username FROM users WHERE channel_type = 'hostile'"
    )
    return {row.channel_user_id: row.username for row in rows}


@HOSTILE
@given(event_id=st.one_of(any_text(20), st.text(min_size=250, max_size=400)))
async def test_any_platform_event_id_is_stored_once(
    service: ConversationService, engine: AsyncEngine, event_id: str
) -> None:
    """Adapters pass the platform's event id through: whatever it is, a redelivery of the
    event is recognised and the exchange is stored once."""
    user = new_user()
    unique = f"{user}{event_id}"  # ids are unique per platform; hypothesis repeats them
    message = IncomingMessage("console", user, "once", username=user, platform_message_id=unique)

    first = await handled(service, message)
    again = await service.handle(message)

    assert first.kind is ReplyKind.ANSWER, first
    assert again.kind is ReplyKind.DUPLICATE and again.text is None
    assert [row.role for row in await messages_of(engine, user)] == ["user", "assistant"]


async def test_an_empty_event_id_identifies_nothing(
    service: ConversationService, engine: AsyncEngine
) -> None:
    """Two users' messages that both carry an empty id are two messages, not a redelivery."""
    first, second = new_user(), new_user()
    for user in (first, second):
        message = IncomingMessage("console", user, "hi", username=user, platform_message_id="")
        assert (await service.handle(message)).kind is ReplyKind.ANSWER
        assert len(await messages_of(engine, user)) == 2
