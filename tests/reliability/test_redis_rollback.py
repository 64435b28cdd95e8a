"""A Redis brought back from an older snapshot (issue 20): the next message of every
affected conversation is answered on the full context Postgres holds.

A failover to a lagging replica, or a host crash under `appendfsync everysec`, gives
the bot a Redis that lacks its last writes: the cached contexts (and sessions) of the
users who talked since are older than Postgres. Here a redis-server of the test's own
keeps an RDB file: the users talk, the server SAVEs, the file is copied aside, they
talk on, the server is killed and started again on the same port from the old file.
The service is not told: its pool finds its connections dead, its breaker trips and
probes, and it uses the (old) cache again by itself.

The turn's fence catches a stale context: the exchange is stored only if the
conversation's newest message is still the one the context ended with
(conversations.last_message_id, checked by the save statement itself: no read on the
warm path); otherwise the message is answered again on the context from Postgres, and
the cache rebuilt. A stale session is found by the same statement: one that names a
conversation closed since (/reset), or lacks the model chosen since (/model; the
fence compares the session's model with the conversation's and its writer's). Each
stale conversation costs one responder call more, once.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ReplyKind
from bot.service import ConversationService
from bot.tallies import Tally
from tests.redis_servers import RedisProcess, answering, redis_server
from tests.reliability.conftest import Report
from tests.reliability.load import Attempt, LoadResult, check_store, finals, summarize
from tests.support import (
    CountingResponder,
    ServiceFactory,
    assert_in_order,
    conversation_of,
    echo,
    handled,
    messages_of,
    msg,
    new_user,
)

OP_TIMEOUT = 0.5  # REDIS_OP_TIMEOUT_SECONDS
COOLDOWN = 0.3  # REDIS_BREAKER_COOLDOWN_SECONDS
CHANNEL = "console"
DEFAULT_MODEL = "gpt-4o-mini"  # the echo responder names the model it was asked for
CHOSEN = "gpt-4o"


def with_model(answer: str, said: str, instead: str) -> str:
    """The echo responder's `answer`, as given by the model `instead` of `said`."""
    return answer.replace(f"; model {said})", f"; model {instead})")


class Users:
    """The users of the scenario, talking to one service; every message recorded."""

    def __init__(self, service: ConversationService, responder: CountingResponder) -> None:
        self.service = service
        self.responder = responder
        self.attempts: list[Attempt] = []
        self.names: list[str] = []
        self._numbers: dict[str, int] = {}

    def new(self) -> str:
        user = new_user()
        self.names.append(user)
        return user

    async def say(self, user: str, text: str) -> tuple[str | None, int]:
        """The reply to `text`, and how many times the responder was asked for it."""
        number = self._numbers.get(user, 0)
        self._numbers[user] = number + 1
        calls = len(self.responder.calls)
        message = msg(user, text, pid=f"{user}:{number}")
        started = time.monotonic()
        reply = await handled(self.service, message)
        finished = time.monotonic()
        if reply.kind is not ReplyKind.COMMAND:
            self.attempts.append(
                Attempt(f"{user}:{number}", user, text, started, finished, reply.kind, reply.text)
            )
        return reply.text, len(self.responder.calls) - calls

    async def exchanges(self, user: str, texts: list[str]) -> None:
        for text in texts:
            await self.say(user, text)


async def snapshot(server: RedisProcess, directory: Path, aside: Path) -> None:
    """SAVE the server's data to its RDB file, and keep a copy of that file."""
    client = Redis.from_url(server.url)
    try:
        assert await client.save()
    finally:
        await client.aclose()
    shutil.copy(directory / "dump.rdb", aside)


async def cache_in_use_again(users: Users, bystander: str) -> None:
    """Once the service uses Redis again: its pooled connections died with the server,
    so a first message trips the breaker (answered from Postgres), and a later one
    probes. The bystander's messages, answered meanwhile, are checked like the rest."""
    service = users.service
    for number in range(20):
        before = service.stats[Tally.CACHE_UNAVAILABLE]
        await users.say(bystander, f"are you there {number}")
        if service.stats[Tally.CACHE_UNAVAILABLE] == before and not service.cache.guard.is_open:
            return
        await asyncio.sleep(COOLDOWN)  # the breaker's cool-down, before it probes
    raise AssertionError("the service never used Redis again")


@pytest.mark.timeout(90)
async def test_a_redis_restored_from_an_older_snapshot_answers_on_the_full_context(
    make_service: ServiceFactory, engine: AsyncEngine, report: Report, tmp_path: Path
) -> None:
    directory, aside = tmp_path / "redis", tmp_path / "snapshot.rdb"
    responder = CountingResponder()
    started = time.monotonic()
    with redis_server(directory) as first:
        await answering(first.url)
        service = await make_service(
            responder=responder,
            redis_url=first.url,
            redis_op_timeout_seconds=OP_TIMEOUT,
            redis_breaker_cooldown_seconds=COOLDOWN,
        )
        users = Users(service, responder)
        active, idle, reset, chooser, bystander = (users.new() for _ in range(5))
        for user in (active, idle, reset, chooser, bystander):
            await users.exchanges(user, ["one", "two", "three"])
        await snapshot(first, directory, aside)
        for user in (active, idle):  # Postgres and Redis hold these, the snapshot not
            await users.exchanges(user, ["four", "five"])
        await users.say(reset, "/reset")  # a new conversation the snapshot knows nothing of
        await users.exchanges(reset, ["anew"])
        await users.say(chooser, f"/model {CHOSEN}")  # their last word before the rollback
        port = first.port
        first.kill()

    shutil.copy(aside, directory / "dump.rdb")
    with redis_server(directory, port=port) as second:
        await answering(second.url)
        assert await cached_context_length(service, active, second) == 6  # rolled back
        await cache_in_use_again(users, bystander)
        conflicts = service.stats[Tally.TURN_CONFLICT]

        # The next message of the user who talked last: the cache's context lacks two
        # exchanges; the fence catches it, and it is answered again on Postgres's.
        text, active_calls = await users.say(active, "after the rollback")
        assert text == echo("after the rollback", 10)
        assert service.stats[Tally.TURN_CONFLICT] == conflicts + 1
        text, warm_calls = await users.say(active, "and again")  # the cache was rebuilt
        assert (text, warm_calls) == (echo("and again", 12), 1)

        # A user idle through the rollback and the traffic after it: the same, later.
        await users.exchanges(bystander, ["meanwhile", "still here"])
        text, idle_calls = await users.say(idle, "back again")
        assert text == echo("back again", 10)

        # A user whose cached session names the conversation they left (/reset) since.
        stale_sessions = service.stats[Tally.STALE_SESSION]
        text, reset_calls = await users.say(reset, "where were we")
        assert text == echo("where were we", 2)  # the new conversation's one exchange
        assert service.stats[Tally.STALE_SESSION] == stale_sessions + 1

        # A user whose cached session lacks the model they chose since: nothing else
        # changed, but the fence covers the session's model too.
        text, chooser_calls = await users.say(chooser, "which model")
        assert text == with_model(echo("which model", 6), DEFAULT_MODEL, CHOSEN)
        conflicts = service.stats[Tally.TURN_CONFLICT] - conflicts

    result = await figures(users, engine, time.monotonic() - started)
    report(
        result.noting(
            turn_conflicts=conflicts,
            stale_sessions=service.stats[Tally.STALE_SESSION],
            responder_calls=f"{active_calls}/{idle_calls}/{reset_calls}/{chooser_calls}",
        )
    )
    s = result.store
    assert (s.duplicates, s.lost, s.phantom, s.orphan_replies, s.context_errors) == (0,) * 5
    assert s.stored_user == len(users.attempts) == result.answered, result.line()
    for user in (active, idle, bystander):
        assert_in_order(await conversation_of(engine, user))
    chosen = await conversation_of(engine, chooser)
    assert_in_order([(role, with_model(t, CHOSEN, DEFAULT_MODEL)) for role, t in chosen])
    rows = await messages_of(engine, reset)
    newest = rows[-1].conversation_id
    assert [r.content for r in rows if r.conversation_id == newest] == [
        "anew",
        echo("anew"),
        "where were we",
        echo("where were we", 2),
    ]
    # One extra responder call per stale conversation, no more.
    assert (active_calls, idle_calls, reset_calls, chooser_calls) == (2,) * 4, result.line()


async def cached_context_length(
    service: ConversationService, user: str, server: RedisProcess
) -> int:
    """How many messages the restored Redis caches for the user's conversation."""
    client = Redis.from_url(server.url)
    try:
        keys = service.cache.keys
        conversation = await client.hget(keys.session(CHANNEL, user), "conversation_id")
        assert conversation is not None
        key = keys.context_template().format(conversation_id=conversation.decode())
        return int(await client.llen(key))
    finally:
        await client.aclose()


async def figures(users: Users, engine: AsyncEngine, seconds: float) -> LoadResult:
    store = await check_store(engine, CHANNEL, users.names, finals(users.attempts))
    return summarize(
        "redis restored from an older snapshot",
        users.attempts,
        store,
        sent=len(users.attempts),
        seconds=seconds,
        fault_ended=None,
    )
