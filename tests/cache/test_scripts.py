"""The Lua scripts, one transition at a time, against real Redis."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import fields
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from bot.cache import scripts
from bot.cache.events import EventClaim, EventState
from bot.cache.state import ContextUpdate, Refresh
from bot.domain import ContextMessage, IncomingMessage, SessionState
from tests.cache.conftest import CacheFactory
from tests.support import msg

TOKEN = "our-token"


def message(event: str | None = "ev-1", user: str = "alice") -> IncomingMessage:
    return IncomingMessage("console", user, "hello", platform_message_id=event)


async def state_of(redis: Redis, key: str) -> EventClaim | None:
    raw = await redis.get(key)
    return None if raw is None else EventClaim.parse(raw)


def test_every_script_names_its_arguments_at_the_top() -> None:
    bodies = [scripts._BEGIN, scripts._RATE, scripts._FINISH, scripts._ABORT, scripts._EXTEND]
    for body in [*bodies, scripts._WARM]:
        assert "KEYS[" not in body and "ARGV[" not in body  # only the names of the header
    for script in (scripts.BEGIN, scripts.RATE, scripts.FINISH, scripts.ABORT, scripts.WARM):
        lines = script.source.splitlines()
        for name in (field.name for field in fields(script.args_type)):
            assert any(line.startswith(f"local {name} = ") for line in lines), name


# --- BEGIN ----------------------------------------------------------------------------


async def test_begin_takes_the_lock_and_claims_the_event(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    msg = message()

    hot = await cache.claims.begin(msg, TOKEN)

    keys = cache.keys
    assert hot.status == "ok" and not hot.taken_over
    assert await cache.redis.get(keys.lock("console", "alice")) == TOKEN.encode()
    assert 0 < await cache.redis.pttl(keys.lock("console", "alice")) <= keys.lock_ttl * 1000
    assert await state_of(cache.redis, cache.claims.event_key(msg)) == EventClaim(
        EventState.PROCESSING
    )
    assert await cache.redis.zscore(keys.active("console"), "alice") is not None


async def test_begin_waits_for_a_lock_held_by_another_token(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    await cache.claims.begin(message("ev-1"), "theirs")

    hot = await cache.claims.begin(message("ev-2"), TOKEN)

    assert hot.status == "locked"
    assert await cache.redis.get(cache.claims.event_key(message("ev-2"))) is None  # unclaimed


@pytest.mark.parametrize(
    ("found", "status", "taken_over"),
    [
        ("done", "duplicate", False),
        ("answered:{now}", "delivering", False),
        ("answered:{old}", "ok", True),  # its worker died before sending the reply
        ("processing", "ok", True),  # its holder is gone: we hold the lock now
        ("unfinished", "ok", True),  # failed with its outcome unknown
    ],
)
async def test_begin_on_a_claimed_event(
    make_cache: CacheFactory, found: str, status: str, taken_over: bool
) -> None:
    cache = await make_cache()
    msg = message()
    now, old = time.time(), time.time() - cache.keys.delivery_lease - 1
    await cache.redis.set(cache.claims.event_key(msg), found.format(now=now, old=old))

    hot = await cache.claims.begin(msg, TOKEN)

    assert (hot.status, hot.taken_over) == (status, taken_over)
    lock = await cache.redis.get(cache.keys.lock("console", "alice"))
    assert (lock is None) == (status != "ok")  # given back at once when not ours to handle


# --- FINISH ---------------------------------------------------------------------------


async def test_finish_marks_answered_writes_back_and_releases(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    msg, delivered = message("ev-2"), message("ev-1")
    await cache.redis.set(cache.claims.event_key(delivered), "answered:1")
    await cache.claims.begin(msg, TOKEN)
    cache.claims.delivered.add(cache.claims.event_key(delivered))
    session = _session()

    await cache.claims.settle(msg, TOKEN, _refresh(session, ContextUpdate.REPLACE), was_read=True)

    keys, redis = cache.keys, cache.redis
    answered = await state_of(redis, cache.claims.event_key(msg))
    assert answered is not None and answered.state is EventState.ANSWERED
    assert answered.answered_at == pytest.approx(time.time(), abs=5)
    assert await state_of(redis, cache.claims.event_key(delivered)) == EventClaim(EventState.DONE)
    assert await redis.get(keys.lock("console", "alice")) is None
    fields = await redis.hgetall(keys.session("console", "alice"))
    assert fields[b"conversation_id"] == str(session.conversation_id).encode()
    assert len(await redis.lrange(keys.context(session.conversation_id), 0, -1)) == 2


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        (ContextUpdate.KEEP, ["old"]),
        (ContextUpdate.APPEND, ["reply", "question", "old"]),
        (ContextUpdate.REPLACE, ["reply", "question"]),
    ],
)
async def test_finish_updates_the_context_as_told(
    make_cache: CacheFactory, update: ContextUpdate, expected: list[str]
) -> None:
    cache = await make_cache()
    session, msg = _session(), message()
    key = cache.keys.context(session.conversation_id)
    await cache.redis.rpush(key, '{"role":"user","content":"old","ts":1}')
    await cache.claims.begin(msg, TOKEN)

    await cache.claims.settle(msg, TOKEN, _refresh(session, update), was_read=True)

    items = [_content(raw) for raw in await cache.redis.lrange(key, 0, -1)]
    assert items == expected


async def test_finish_never_undoes_done(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    msg = message()
    await cache.claims.begin(msg, TOKEN)
    await cache.redis.set(cache.claims.event_key(msg), "done")  # another worker's, meanwhile

    await cache.claims.settle(msg, TOKEN, _refresh(_session(), ContextUpdate.KEEP), was_read=True)

    assert await cache.redis.get(cache.claims.event_key(msg)) == b"done"


# --- ABORT and EXTEND -----------------------------------------------------------------


@pytest.mark.parametrize(("unfinished", "left"), [(True, b"unfinished"), (False, None)])
async def test_abort_releases_and_forgets_or_marks_unfinished(
    make_cache: CacheFactory, unfinished: bool, left: bytes | None
) -> None:
    cache = await make_cache()
    msg = message()
    await cache.claims.begin(msg, TOKEN)

    await cache.claims.release(msg, TOKEN, was_read=True, unfinished=unfinished)

    assert await cache.redis.get(cache.claims.event_key(msg)) == left
    assert await cache.redis.get(cache.keys.lock("console", "alice")) is None


async def test_abort_without_the_lock_leaves_everything_alone(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    msg = message()
    await cache.claims.begin(msg, "theirs")

    await cache.claims.release(msg, TOKEN, was_read=True, unfinished=True)

    assert await cache.redis.get(cache.claims.event_key(msg)) == b"processing"
    assert await cache.redis.get(cache.keys.lock("console", "alice")) == b"theirs"


async def test_extend_renews_only_our_own_lock(make_cache: CacheFactory) -> None:
    cache = await make_cache(lock_ttl_seconds=5)
    msg = message()
    lock = cache.keys.lock("console", "alice")
    await cache.claims.begin(msg, TOKEN)
    await cache.redis.pexpire(lock, 100)

    assert await cache.claims.extend_lock(msg, TOKEN)
    assert await cache.redis.pttl(lock) > 4000
    assert not await cache.claims.extend_lock(msg, "theirs")


# --- RATE and WARM --------------------------------------------------------------------


async def test_rate_counts_within_a_window_that_expires(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    user = uuid.uuid4()

    counts = [await cache.count_rate(user, msg("someone", "hi")) for _ in range(3)]

    assert [c.count for c in counts] == [1, 2, 3]
    assert all(0 < c.retry_after <= 60 for c in counts)
    assert 0 < await cache.redis.ttl(cache.keys.rate(user)) <= 60


async def test_warm_fills_only_what_is_absent(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    keys, redis = cache.keys, cache.redis
    fresh, cached = _session(), _session()
    await redis.hset(keys.session("console", "bob"), mapping={"user_id": "live"})
    warm = scripts.WARM.bind(redis)

    def call(user: str, session_id: uuid.UUID) -> scripts.Warm:
        return scripts.Warm(
            session_key=keys.session("console", user),
            context_key=keys.context(session_id),
            session_ttl=60,
            context_ttl=60,
            fence_field="last_message_id",
            fence="m1",
            summary_field="summary",
            summary="",
            session=f'{{"user_id":"u","conversation_id":"{session_id}","model":""}}',
            context=('{"role":"user","content":"hi","ts":1}',),
        )

    filled = await warm(call("alice", fresh.conversation_id))
    kept = await warm(call("bob", cached.conversation_id))

    assert filled == [1, 1] and kept == [0, 1]
    # The live session is kept; the context filled brings its fence (and summary) along.
    assert (await redis.hgetall(keys.session("console", "bob"))) == {
        b"user_id": b"live", b"last_message_id": b"m1", b"summary": b""
    }  # fmt: skip
    assert (await redis.hget(keys.session("console", "alice"), "conversation_id")) == str(
        fresh.conversation_id
    ).encode()


# --- helpers --------------------------------------------------------------------------


def _session() -> SessionState:
    return SessionState(uuid.uuid4(), uuid.uuid4(), None)


def _refresh(session: SessionState, update: ContextUpdate) -> Refresh:
    now = datetime.now(UTC)
    new = [ContextMessage("assistant", "reply", now), ContextMessage("user", "question", now)]
    return Refresh(session=session, context=new, context_update=update)


def _content(raw: bytes) -> str:
    return str(json.loads(raw)["content"])
