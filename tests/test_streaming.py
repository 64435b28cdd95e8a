"""Streamed replies through the service (docs/streaming.md): the user's message is
stored before the first piece is shown, the reply before the service returns it whole,
and a reply cut off is stored and shown as such; one reply per event, whoever streams."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.bench.probes import COMMITS, CONTROL, WRITE, PgProbe
from bot.cache.state import BeginStatus
from bot.channels.dispatch import Dispatcher
from bot.domain import IncomingMessage, ReplyKind, TextSink
from bot.errors import ResponderUnavailable
from bot.metrics import Metrics
from bot.responders.base import ResponderRequest, ResponderResult
from bot.service import INTERRUPTED_NOTE, RESPONDER_FAILED_TEXT, ConversationService
from bot.store.conversations import ExchangeRows
from bot.tallies import Tally
from tests.support import ServiceFactory, fetch, msg, new_user

PIECES = ("Once ", "upon ", "a ", "time.")
SHORT_LOCK = {"lock_ttl_seconds": 1, "lock_wait_seconds": 20}


class ScriptedStream:
    """A responder that writes PIECES one by one; it may break off after `fail_after`
    pieces, or stop after `hang_after` and wait for ever (a stalled LLM)."""

    name = "scripted"

    def __init__(self, fail_after: int | None = None, hang_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.hang_after = hang_after
        self.hanging = asyncio.Event()

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        for number, piece in enumerate(PIECES):
            if number == self.fail_after:
                raise ResponderUnavailable("the stream broke off")
            if number == self.hang_after:
                self.hanging.set()
                await asyncio.Event().wait()
            if on_text is not None:
                await on_text(piece)
        return ResponderResult("".join(PIECES), "scripted-model", 5, len(PIECES))

    async def aclose(self) -> None:
        return None


class Screen:
    """An adapter's display: what it was shown, and checks run as each piece comes."""

    def __init__(self, on_piece: Any = None) -> None:
        self.pieces: list[str] = []
        self.on_piece = on_piece

    async def __call__(self, piece: str) -> None:
        if self.on_piece is not None:
            await self.on_piece(piece)
        self.pieces.append(piece)


async def stored(engine: AsyncEngine, user: str) -> Sequence[Any]:
    return await fetch(
        engine,
        """SELECT m.id, m.role, m.content, m.reply_to, m.metadata
           FROM messages m JOIN conversations c ON c.id = m.conversation_id
           JOIN users u ON u.id = c.user_id
           WHERE u.channel_user_id = :user ORDER BY m.timestamp""",
        user=user,
    )


async def test_the_pieces_are_shown_in_order_after_the_users_message_is_stored(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(responder=ScriptedStream())
    user = new_user()
    seen_before_first: list[Sequence[Any]] = []

    async def check(piece: str) -> None:
        if not seen_before_first:
            seen_before_first.append(await stored(engine, user))

    screen = Screen(check)
    reply = await service.handle(msg(user, "tell me a story", pid=f"{user}:1"), screen)

    assert screen.pieces == list(PIECES)
    assert reply.kind is ReplyKind.ANSWER and reply.text == "".join(PIECES)
    assert [(r.role, r.content) for r in seen_before_first[0]] == [("user", "tell me a story")]
    rows = await stored(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "tell me a story"),
        ("assistant", "Once upon a time."),
    ]
    assert rows[1].reply_to == rows[0].id and set(rows[1].metadata) == {"latency_ms"}
    assert service.stats["streamed"] == 1


async def test_a_warm_streamed_exchange_takes_two_transactions_and_reads_nothing(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(responder=ScriptedStream())
    probe = PgProbe()  # what the driver sends, whichever layer sends it
    probe.attach(service.store.engine)
    user = new_user()
    await service.handle(msg(user, "first"), Screen())
    before = probe.snapshot()

    reply = await service.handle(msg(user, "second"), Screen())

    sent = probe.snapshot() - before
    assert reply.kind is ReplyKind.ANSWER
    # The user's message, then the reply: each one statement in BEGIN … COMMIT.
    assert sent == Counter({WRITE: 2, CONTROL: 4, COMMITS: 2, "checkouts": 2}), sent


async def test_a_stream_that_breaks_off_is_stored_and_shown_as_interrupted(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(responder=ScriptedStream(fail_after=2))
    user, screen = new_user(), Screen()

    reply = await service.handle(msg(user, "go on"), screen)

    assert screen.pieces == ["Once ", "upon "]
    assert reply.kind is ReplyKind.INTERRUPTED
    assert reply.text == f"Once upon \n\n{INTERRUPTED_NOTE}"
    rows = await stored(engine, user)
    assert [(r.role, r.content) for r in rows] == [("user", "go on"), ("assistant", "Once upon ")]
    assert rows[1].metadata.pop("latency_ms") >= 0  # the responder's time to the cut
    assert rows[1].metadata == {"status": "interrupted", "reason": "responder"}
    assert service.stats["interrupted"] == 1


async def test_a_responder_failing_before_any_piece_gives_the_apology_and_no_reply_row(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(responder=ScriptedStream(fail_after=0))
    user, screen = new_user(), Screen()

    reply = await service.handle(msg(user, "hello?"), screen)

    assert screen.pieces == []
    assert reply.kind is ReplyKind.FAILED and reply.text == RESPONDER_FAILED_TEXT
    assert [(r.role, r.content) for r in await stored(engine, user)] == [("user", "hello?")]
    await service.handle(msg(user, "still there?"), screen)
    assert service.stats[Tally.TURN_CONFLICT] == 0  # the turn was given back: nobody waits


async def test_a_display_that_fails_loses_nothing(
    make_service: ServiceFactory, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    service = await make_service(responder=ScriptedStream())
    user, calls = new_user(), []

    async def broken(piece: str) -> None:
        calls.append(piece)
        raise ConnectionError("the platform hung up")

    reply = await service.handle(msg(user, "hi"), broken)

    assert calls == ["Once "]  # told once, then left alone
    assert reply.kind is ReplyKind.ANSWER and reply.text == "".join(PIECES)
    assert [r.role for r in await stored(engine, user)] == ["user", "assistant"]
    assert caplog.text.count("cannot show the reply as it streams") == 1


async def test_streams_running_at_shutdown_are_cut_off_within_the_grace_period(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    responder = ScriptedStream(hang_after=3)
    service = await make_service(responder=responder, stream_shutdown_margin_seconds=1)
    dispatcher = Dispatcher(service, Metrics())
    user, screen = new_user(), Screen()
    handling = asyncio.create_task(dispatcher.handle(msg(user, "a long story"), screen))
    await asyncio.wait_for(responder.hanging.wait(), 10)

    dispatcher.close()
    drained = await dispatcher.drain(grace=2)
    reply = await handling

    assert drained
    assert reply.kind is ReplyKind.INTERRUPTED and reply.text is not None
    assert reply.text.startswith("Once upon a ") and reply.text.endswith(INTERRUPTED_NOTE)
    rows = await stored(engine, user)
    assert rows[-1].content == "Once upon a "
    assert rows[-1].metadata.pop("latency_ms") >= 0
    assert rows[-1].metadata == {"status": "interrupted", "reason": "shutdown"}


async def test_with_streaming_off_the_reply_comes_whole(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    service = await make_service(responder=ScriptedStream(), stream_replies=False)
    user, screen = new_user(), Screen()

    reply = await service.handle(msg(user, "hi"), screen)

    assert screen.pieces == [] and reply.text == "".join(PIECES)
    assert [r.role for r in await stored(engine, user)] == ["user", "assistant"]


async def test_a_worker_that_died_mid_stream_is_taken_over_and_answered_once(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    survivor = await make_service(responder=ScriptedStream(), **SHORT_LOCK)
    user = new_user()
    event = msg(user, "are you there?", pid=f"{user}:1")
    # What a worker killed mid-stream leaves: its claim 'processing' and a lock nobody
    # renews in Redis; the user's message, and no reply, in Postgres.
    dead = await make_service(responder=ScriptedStream(hang_after=2), **SHORT_LOCK)
    assert (await dead.cache.claims.begin(event, "token-of-the-dead")).status is BeginStatus.OK
    await _store_only_the_message(dead, event)
    screen = Screen()

    redelivered = await asyncio.wait_for(survivor.handle(event, screen), timeout=30)
    survivor.delivered(event, redelivered.kind)
    again = await survivor.handle(event, Screen())

    assert redelivered.kind is ReplyKind.ANSWER and screen.pieces == list(PIECES)
    assert again.kind is ReplyKind.DUPLICATE and again.text is None
    rows = await stored(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "are you there?"),
        ("assistant", "Once upon a time."),
    ]


async def _store_only_the_message(service: ConversationService, event: IncomingMessage) -> None:
    """Transaction 1 of a streamed exchange, as the dead worker ran it."""
    conversations = service.store.conversations
    session = await conversations.load_session("console", event.channel_user_id, None)
    now = datetime.now(UTC)
    rows = ExchangeRows(
        conversation_id=session.conversation_id,
        channel=event.channel,
        platform_message_id=event.platform_message_id,
        user_text=event.text,
        user_ts=now,
        user_tokens=None,
        reply_text=None,
        reply_ts=now,
        reply_tokens=None,
        model_used=None,
        user_message_id=uuid.uuid4(),
        reply_id=uuid.uuid4(),
    )
    await conversations.save_exchange(rows)
