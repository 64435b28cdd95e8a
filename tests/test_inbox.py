"""The durable inbox (bot/inbox.py) through the service, against real Postgres and Redis:
kept before acknowledgement, deleted once delivered, taken over after a holder dies,
answered in order per writer, deferred replies tried again."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import IncomingMessage, ReplyKind
from bot.errors import ResponderRejected, ResponderUnavailable
from bot.responders.base import ResponderRequest, ResponderResult
from bot.responders.echo import EchoResponder
from bot.service import DEFERRED_TEXT, ConversationService
from tests.support import (
    GatedResponder,
    ServiceFactory,
    echo,
    fetch,
    messages_of,
    msg,
    new_user,
)

SHORT_LEASE = {"inbox_lease_seconds": 1.0, "inbox_sweep_seconds": 0.2}


async def inbox_rows(engine: AsyncEngine, user: str) -> list[str]:
    rows = await fetch(
        engine,
        "SELECT platform_message_id FROM inbox WHERE message->>'channel_user_id' = :u ORDER BY seq",
        u=user,
    )
    return [row.platform_message_id for row in rows]


async def received_and_handled(service: ConversationService, message: IncomingMessage) -> str:
    receipt = await service.receive(message)
    assert receipt.taken
    reply = await service.handle(message)
    service.delivered(message, reply.kind)
    return reply.text or ""


async def sweep(service: ConversationService, channels: tuple[str, ...] = ("console",)) -> list:
    """What a worker's sweep does, without its adapters: take, answer, deliver."""
    answers = []
    for taken in await service.inbox.take(list(channels), 10):
        current = taken
        while current is not None:
            message = service.adopt(current)
            reply = await service.handle(message)
            answers.append((message.platform_message_id, reply))
            if reply.kind is not ReplyKind.DEFERRED:
                service.delivered(message, reply.kind)
            current = await service.inbox.take_next(current.place)
    await service.inbox.flush()
    return answers


async def test_an_event_is_kept_until_its_reply_is_delivered(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    message = msg(user, "hello", pid=f"{user}:1")
    receipt = await service.receive(message)
    assert receipt.taken and receipt.seq is not None and receipt.older == ()
    assert await inbox_rows(engine, user) == [f"{user}:1"]

    reply = await service.handle(message)
    assert reply.kind is ReplyKind.ANSWER
    assert await inbox_rows(engine, user) == [f"{user}:1"]  # not delivered yet
    service.delivered(message, reply.kind)
    await service.inbox.flush()
    assert await inbox_rows(engine, user) == []


async def test_a_message_without_a_platform_id_is_not_kept(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    receipt = await service.receive(msg(user, "hello"))
    assert receipt.taken and receipt.seq is None
    assert await inbox_rows(engine, user) == []


async def test_a_redelivery_held_by_another_live_worker_is_not_taken(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    first, second = await make_service(), await make_service()
    user = new_user()
    message = msg(user, "hello", pid=f"{user}:1")
    assert (await first.receive(message)).taken
    assert not (await second.receive(message)).taken  # the first one answers it
    again = await first.receive(message)  # its own retry (after "can't answer") is its own
    assert again.taken and again.resumed


async def test_the_events_of_a_dead_worker_are_answered_by_a_sweep_once_in_order(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    dead = await make_service(**SHORT_LEASE)
    survivor = await make_service(**SHORT_LEASE)
    user = new_user()
    events = [msg(user, f"question {n}", pid=f"{user}:{n}") for n in range(3)]
    for event in events:  # acknowledged to the platform, then the worker died
        assert (await dead.receive(event)).taken
    assert await sweep(survivor) == []  # its lease still runs

    await asyncio.sleep(1.1)
    answers = await sweep(survivor)
    assert [pid for pid, _ in answers] == [e.platform_message_id for e in events]
    assert all(reply.kind is ReplyKind.ANSWER for _, reply in answers)
    assert [r.content for r in await messages_of(engine, user)] == [
        text for n in range(3) for text in (f"question {n}", echo(f"question {n}", 2 * n))
    ]
    assert await inbox_rows(engine, user) == []
    assert await sweep(survivor) == []


async def test_a_newer_message_waits_for_an_older_one_answered_elsewhere(
    make_service: ServiceFactory, engine: AsyncEngine, redis: object
) -> None:
    gate = GatedResponder()
    slow = await make_service(responder=gate)
    fast = await make_service()
    user = new_user()
    first, second = (msg(user, f"m{n}", pid=f"{user}:{n}") for n in (1, 2))
    answering = asyncio.create_task(received_and_handled(slow, first))
    await asyncio.wait_for(gate.started.wait(), 10)
    receipt = await fast.receive(second)
    assert receipt.older != ()
    later = asyncio.create_task(fast.handle(second))
    await asyncio.sleep(0.3)
    assert not later.done()  # the older message is still being answered
    gate.release.set()
    await answering
    reply = await asyncio.wait_for(later, 10)
    assert reply.text == echo("m2", 2)


class Failing(EchoResponder):
    """The echo responder failing while `down` is set, as an LLM that is down would."""

    def __init__(self, error: Exception) -> None:
        self.down = True
        self.calls = 0
        self.error = error

    async def respond(self, request: ResponderRequest, on_text: object = None) -> ResponderResult:
        self.calls += 1
        if self.down:
            raise self.error
        return await super().respond(request)


async def test_a_reply_failing_for_now_is_deferred_and_answered_later(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    llm = Failing(ResponderUnavailable("LLM API returned 503", status=503))
    service = await make_service(responder=llm, **SHORT_LEASE)
    user = new_user()
    first, second = (msg(user, f"m{n}", pid=f"{user}:{n}") for n in (1, 2))
    assert (await service.receive(first)).taken
    reply = await service.handle(first)
    assert (reply.kind, reply.text) == (ReplyKind.DEFERRED, DEFERRED_TEXT)
    assert await messages_of(engine, user) == []  # nothing stored yet
    assert (await service.receive(second)).taken
    reply = await service.handle(second)  # behind the first, nobody answering it now
    assert (reply.kind, reply.text) == (ReplyKind.DEFERRED, None)

    await asyncio.sleep(0.3)  # its first retry is due after INBOX_SWEEP_SECONDS
    answers = await sweep(service)  # still down: the first tried again, told no more
    assert [(pid, r.kind, r.text) for pid, r in answers] == [
        (f"{user}:1", ReplyKind.DEFERRED, None)
    ]
    llm.down = False

    async def both_answered() -> bool:
        answers.extend(await sweep(service))
        return len([a for a in answers if a[1].kind is ReplyKind.ANSWER]) == 2

    for _ in range(100):
        if await both_answered():
            break
        await asyncio.sleep(0.2)
    answered = [(pid, r.text) for pid, r in answers if r.kind is ReplyKind.ANSWER]
    assert answered == [(f"{user}:1", echo("m1")), (f"{user}:2", echo("m2", 2))]
    assert await inbox_rows(engine, user) == []


async def test_a_rejected_request_gets_the_apology_at_once(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    llm = Failing(ResponderRejected("LLM API returned 400", status=400))
    service = await make_service(responder=llm)
    user = new_user()
    message = msg(user, "m1", pid=f"{user}:1")
    assert (await service.receive(message)).taken
    reply = await service.handle(message)
    assert reply.kind is ReplyKind.UNAVAILABLE and reply.text != DEFERRED_TEXT
    assert [r.role for r in await messages_of(engine, user)] == ["user"]


async def test_a_streamed_reply_deferred_is_answered_when_resumed(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    """A streamed handling stores the user's message before the responder is asked; a
    resumed one is not streamed (bot/channels/base.py, resume): it finds the message
    stored without a reply, and answers it, the reply stored to it, once."""
    llm = Failing(ResponderUnavailable("LLM API returned 503", status=503))
    service = await make_service(responder=llm, stream_replies=True, **SHORT_LEASE)
    user = new_user()
    message = msg(user, "m1", pid=f"{user}:1")
    shown: list[str] = []

    async def show(piece: str) -> None:
        shown.append(piece)

    assert (await service.receive(message)).taken
    reply = await service.handle(message, show)
    assert (reply.kind, reply.text) == (ReplyKind.DEFERRED, DEFERRED_TEXT)
    assert [r.content for r in await messages_of(engine, user)] == ["m1"]  # stored first
    llm.down = False

    answers: list = []
    for _ in range(50):  # its retry is due after INBOX_SWEEP_SECONDS
        answers.extend(await sweep(service))
        if answers:
            break
        await asyncio.sleep(0.1)
    ((pid, reply),) = answers
    # (The context read from Postgres holds the stored message already, as for any
    # event taken over: its count of earlier messages is not checked here.)
    assert (pid, reply.kind) == (f"{user}:1", ReplyKind.ANSWER)
    assert reply.text is not None and reply.text.startswith('You said: "m1"')
    assert [(r.role, r.content) for r in await messages_of(engine, user)] == [
        ("user", "m1"),
        ("assistant", reply.text),
    ]
    assert await inbox_rows(engine, user) == []


async def test_an_apology_is_not_sent_again_by_a_sweep(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    """The apology's message stays in the inbox (delivered ignores UNAVAILABLE); taken
    again, its stored message without a reply is a silent duplicate, and it is done."""
    llm = Failing(ResponderRejected("LLM API returned 400", status=400))
    # Redis holds the answered event for a redelivery's sake DELIVERY_LEASE_SECONDS.
    service = await make_service(responder=llm, delivery_lease_seconds=1, **SHORT_LEASE)
    user = new_user()
    message = msg(user, "m1", pid=f"{user}:1")
    assert (await service.receive(message)).taken
    reply = await service.handle(message)
    assert reply.kind is ReplyKind.UNAVAILABLE
    service.delivered(message, reply.kind)

    answers: list = []
    for _ in range(50):  # its lease lapses
        answers.extend(await sweep(service))
        if answers:
            break
        await asyncio.sleep(0.1)
    assert [(r.kind, r.text) for _, r in answers] == [(ReplyKind.DUPLICATE, None)]
    assert await inbox_rows(engine, user) == []
    assert [r.role for r in await messages_of(engine, user)] == ["user"]
