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
            current = await service.inbox.take_next(current.place, channels)
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


async def test_events_arriving_together_share_a_statement_and_know_their_elders(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user, other = new_user(), new_user()
    events = [msg(user, f"m{n}", pid=f"{user}:{n}") for n in range(4)]
    events.insert(2, msg(other, "hi", pid=f"{other}:1"))
    receipts = await asyncio.gather(*(service.receive(e) for e in events))
    seqs = [r.seq for r in receipts]
    assert all(r.taken for r in receipts) and seqs == sorted(seqs)  # kept in order
    mine = [r for r, e in zip(receipts, events, strict=True) if e.channel_user_id == user]
    assert [r.older for r in mine] == [tuple(r.seq for r in mine[:n]) for n in range(4)]
    assert receipts[2].older == ()  # another writer's events are no elders of it
    assert await inbox_rows(engine, user) == [
        e.platform_message_id for e in mine and events if e.channel_user_id == user
    ]


async def test_a_message_without_a_platform_id_is_not_kept(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    receipt = await service.receive(msg(user, "hello"))
    assert receipt.taken and receipt.seq is None
    assert await inbox_rows(engine, user) == []


async def test_a_message_postgres_cannot_hold_is_answered_without_failing_its_batch(
    service: ConversationService, engine: AsyncEngine
) -> None:
    """A NUL or a lone surrogate cannot be in a jsonb value: such an event is not kept
    (it would fail the statement of every event arriving with it), and answered live."""
    user = new_user()
    events = [
        msg(user, "before", pid=f"{user}:1"),
        msg(user, "nul\x00here", pid=f"{user}:2"),
        msg(user, "lone \ud800", pid=f"{user}:3"),
        msg(user, "after", pid=f"{user}:4"),
    ]
    receipts = await asyncio.gather(*(service.receive(e) for e in events))
    assert [r.taken for r in receipts] == [True] * 4
    assert [r.seq is None for r in receipts] == [False, True, True, False]
    assert await inbox_rows(engine, user) == [f"{user}:1", f"{user}:4"]
    reply = await service.handle(events[1])
    assert reply.kind is ReplyKind.ANSWER


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
    assert reply.kind is ReplyKind.FAILED and reply.text != DEFERRED_TEXT
    assert [r.role for r in await messages_of(engine, user)] == ["user"]


async def test_a_streamed_reply_deferred_before_its_first_word_is_stored_later_in_turn(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    llm = Failing(ResponderUnavailable("LLM API returned 502", status=502))
    service = await make_service(responder=llm, stream_replies=True, **SHORT_LEASE)
    user = new_user()
    message = msg(user, "m1", pid=f"{user}:1")
    shown: list[str] = []

    async def show(piece: str) -> None:
        shown.append(piece)

    assert (await service.receive(message)).taken
    reply = await service.handle(message, show)
    assert (reply.kind, reply.text, shown) == (ReplyKind.DEFERRED, DEFERRED_TEXT, [])
    # Streaming stored the user's message before asking for the reply.
    assert [(r.role, r.content) for r in await messages_of(engine, user)] == [("user", "m1")]

    llm.down = False
    await asyncio.sleep(0.3)
    answers = await sweep(service)
    assert [(pid, r.kind, r.text) for pid, r in answers] == [
        (f"{user}:1", ReplyKind.ANSWER, echo("m1"))  # not seeing itself as context
    ]
    assert [(r.role, r.content) for r in await messages_of(engine, user)] == [
        ("user", "m1"),
        ("assistant", echo("m1")),
    ]


async def test_a_newer_message_never_overtakes_an_older_one_of_the_same_worker(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    """Two messages of a writer on one worker both wait for an older one answered
    elsewhere; the first waits too long and is put back: the second goes behind it,
    not ahead (the turn's lock orders only what reaches it)."""
    gate = GatedResponder()
    slow = await make_service(responder=gate)
    fast = await make_service(lock_wait_seconds=1.0)
    user = new_user()
    first, second, third = (msg(user, f"m{n}", pid=f"{user}:{n}") for n in (1, 2, 3))
    answering = asyncio.create_task(received_and_handled(slow, first))
    await asyncio.wait_for(gate.started.wait(), 10)
    assert (await fast.receive(second)).taken
    waiting = asyncio.create_task(fast.handle(second))
    await asyncio.sleep(0.5)
    assert (await fast.receive(third)).taken
    later = asyncio.create_task(fast.handle(third))
    reply = await asyncio.wait_for(waiting, 10)  # waited its second: put back
    assert (reply.kind, reply.text) == (ReplyKind.DEFERRED, None)
    gate.release.set()
    await answering

    reply = await asyncio.wait_for(later, 10)
    assert (reply.kind, reply.text) == (ReplyKind.DEFERRED, None)  # behind the second
    assert [r.content for r in await messages_of(engine, user)] == ["m1", echo("m1")]
    assert await inbox_rows(engine, user) == [f"{user}:2", f"{user}:3"]


async def test_an_apology_is_final_and_holds_up_nothing_behind_it(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    """A reply refused for good gets the apology, and the message is done with: its
    event leaves the inbox once the apology is delivered, a redelivery says nothing, and
    the writer's next message is answered at once."""
    llm = Failing(ResponderRejected("LLM API returned 400", status=400))
    service = await make_service(responder=llm, **SHORT_LEASE)
    user = new_user()
    message, after = (msg(user, f"m{n}", pid=f"{user}:{n}") for n in (1, 2))
    assert (await service.receive(message)).taken
    reply = await service.handle(message)
    assert reply.kind is ReplyKind.FAILED
    service.delivered(message, reply.kind)
    await service.inbox.flush()
    assert await inbox_rows(engine, user) == []

    assert (await service.receive(message)).taken  # the platform sends it again
    again = await service.handle(message)
    assert (again.kind, again.text) == (ReplyKind.DUPLICATE, None)
    service.delivered(message, again.kind)
    await service.inbox.flush()
    llm.down = False
    assert (await service.receive(after)).older == ()
    assert await received_and_handled(service, after) == echo("m2", 1)
    assert [r.role for r in await messages_of(engine, user)] == ["user", "user", "assistant"]
