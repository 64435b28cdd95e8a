"""The conversation flow against real Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.bench.probes import COMMITS, CONTROL, WRITE, PgProbe
from bot.domain import ReplyKind
from bot.service import ConversationService
from tests.support import (
    CountingResponder,
    ServiceFactory,
    fetch,
    flush_cache,
    handled,
    messages_of,
    msg,
    new_user,
)


async def test_exchange_is_stored_and_cached(
    service: ConversationService, engine: AsyncEngine, redis: Redis
) -> None:
    user = new_user()
    reply = await service.handle(msg(user, "hello there", pid="m1"))

    assert reply.kind is ReplyKind.ANSWER
    assert (
        reply.text
        == 'You said: "hello there" (0 earlier messages in my context; model gpt-4o-mini)'
    )
    rows = await messages_of(engine, user)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "hello there"),
        ("assistant", reply.text),
    ]
    assert rows[0].platform_message_id == "m1" and rows[1].model_used == "echo"
    assert rows[0].token_count and rows[1].token_count

    keys = service.cache.keys
    session = await redis.hgetall(keys.session("console", user))
    assert session[b"conversation_id"].decode() == str(reply.conversation_id)
    assert set(session) == {
        *(b"user_id", b"conversation_id", b"model", b"pinned", b"last_activity"),
        b"last_message_id",
        b"summary",  # the context's summary, written with its fence: none yet
    }
    assert session[b"summary"] == b""
    newest = await fetch(
        engine, "SELECT id FROM messages WHERE conversation_id = :c AND role = 'assistant'",
        c=reply.conversation_id,
    )  # fmt: skip
    assert session[b"last_message_id"].decode() == str(newest[0].id)  # the context's fence
    assert 3500 < await redis.ttl(keys.session("console", user)) <= 3600
    context = await redis.lrange(keys.context(reply.conversation_id), 0, -1)
    assert [json.loads(c)["role"] for c in context] == ["assistant", "user"]  # newest first
    assert 7100 < await redis.ttl(keys.context(reply.conversation_id)) <= 7200
    assert await redis.zscore(keys.active("console"), user) is not None
    rate_key = keys.rate(rows[0].conversation_id and (await _user_id(engine, user)))
    assert await redis.get(rate_key) == b"1" and 0 < await redis.ttl(rate_key) <= 60


async def _user_id(engine: AsyncEngine, channel_user_id: str) -> Any:
    rows = await fetch(engine, "SELECT id FROM users WHERE channel_user_id = :c", c=channel_user_id)
    return rows[0].id


async def test_warm_path_reads_nothing_from_postgres(
    service: ConversationService, engine: AsyncEngine
) -> None:
    probe = PgProbe()  # counts what the driver sends, whichever layer sends it
    probe.attach(service.store.engine)
    user = new_user()
    await service.handle(msg(user, "first"))
    before = probe.snapshot()
    reply = await service.handle(msg(user, "second"))
    sent = probe.snapshot() - before

    assert "2 earlier messages" in (reply.text or "")
    # The one exchange statement in BEGIN … COMMIT: no reads, no ping of a busy pool.
    assert sent == Counter({WRITE: 1, CONTROL: 2, COMMITS: 1, "checkouts": 1}), sent
    assert service.stats["session_hit"] == 1 and service.stats["context_hit"] == 1
    assert service.stats["channel_config_hit"] == 1


async def test_the_cold_path_reads_in_one_statement_without_a_begin(
    service: ConversationService, redis: Redis
) -> None:
    probe = PgProbe()
    probe.attach(service.store.engine)
    user = new_user()
    await service.handle(msg(user, "first"))
    await flush_cache(service)  # an hour of silence: Redis holds nothing of the user
    calls: list[Counter[str]] = []
    responder = service.responder
    original = responder.respond

    async def respond(request: Any, on_text: Any = None) -> Any:
        calls.append(probe.snapshot() - before)  # what was sent before the responder
        return await original(request, on_text)

    responder.respond = respond  # type: ignore[method-assign]
    before = probe.snapshot()
    reply = await service.handle(msg(user, "second"))
    sent = probe.snapshot() - before

    assert "2 earlier messages" in (reply.text or "")  # the context came with it
    assert calls == [Counter({WRITE: 1, "checkouts": 1})]  # one round trip, no BEGIN
    assert sent == Counter({WRITE: 2, CONTROL: 2, COMMITS: 1, "checkouts": 2}), sent  # exchange


async def test_an_unreadable_cached_context_is_rebuilt_from_postgres(
    service: ConversationService, redis: Redis
) -> None:
    user = new_user()
    first = await service.handle(msg(user, "one"))
    assert first.conversation_id is not None
    key = service.cache.keys.context(first.conversation_id)
    await redis.lpush(key, "not json", '{"role": "user"}')  # a bug or a hand edit

    second = await service.handle(msg(user, "two"))

    assert second.kind is ReplyKind.ANSWER and "2 earlier messages" in (second.text or "")
    assert service.stats["context_miss"] == 2  # the first message's, and this one
    cached = [json.loads(item) for item in await redis.lrange(key, 0, -1)]
    assert [c["content"] for c in cached] == [second.text, "two", first.text, "one"]


async def test_flushing_redis_continues_the_same_conversation(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    first = await service.handle(msg(user, "one"))
    await service.handle(msg(user, "two"))
    assert await flush_cache(service) > 0

    third = await service.handle(msg(user, "three"))

    assert third.conversation_id == first.conversation_id
    assert "4 earlier messages" in (third.text or "")  # context rebuilt from Postgres
    assert service.stats["session_miss"] == 2 and service.stats["context_miss"] == 2
    rows = await messages_of(engine, user)
    assert [r.content for r in rows if r.role == "user"] == ["one", "two", "three"]


async def test_context_is_capped_and_newest_kept(
    make_service: ServiceFactory, redis: Redis
) -> None:
    service = await make_service(context_messages=4)
    user = new_user()
    for i in range(5):
        reply = await service.handle(msg(user, f"m{i}"))
    assert "4 earlier messages" in (reply.text or "")
    key = service.cache.keys.context(reply.conversation_id)  # type: ignore[arg-type]
    cached = [json.loads(c)["content"] for c in await redis.lrange(key, 0, -1)]
    assert len(cached) == 4 and cached[1] == "m4" and cached[3] == "m3"


async def test_redelivered_event_is_answered_and_stored_once(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    first = await handled(service, msg(user, "hi", pid="evt-1"))
    again = await handled(service, msg(user, "hi", pid="evt-1"))
    await flush_cache(service)  # the database's unique key still knows the event
    third = await handled(service, msg(user, "hi", pid="evt-1"))

    assert first.kind is ReplyKind.ANSWER
    assert again.kind is ReplyKind.DUPLICATE and again.text is None
    assert third.kind is ReplyKind.DUPLICATE and third.text is None
    rows = await messages_of(engine, user)
    assert [r.role for r in rows] == ["user", "assistant"]


async def test_same_event_id_on_two_channels_is_two_messages(
    service: ConversationService, engine: AsyncEngine
) -> None:
    user = new_user()
    a = await service.handle(msg(user, "hi", pid="42", channel="telegram"))
    b = await service.handle(msg(user, "hi", pid="42", channel="slack"))
    assert a.kind is ReplyKind.ANSWER and b.kind is ReplyKind.ANSWER


async def test_concurrent_messages_of_a_new_user_across_workers(
    make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    workers = [await make_service() for _ in range(3)]
    user = new_user()
    texts = [f"msg {i}" for i in range(12)]
    replies = await asyncio.gather(
        *(workers[i % 3].handle(msg(user, t, pid=f"p{i}")) for i, t in enumerate(texts))
    )

    assert all(r.kind is ReplyKind.ANSWER for r in replies), [(r.kind, r.text) for r in replies]
    users = await fetch(engine, "SELECT id FROM users WHERE channel_user_id = :c", c=user)
    assert len(users) == 1
    conversations = await fetch(
        engine, "SELECT id FROM conversations WHERE user_id = :u", u=users[0].id
    )
    assert len(conversations) == 1
    rows = await messages_of(engine, user)
    assert sorted(r.content for r in rows if r.role == "user") == sorted(texts)
    # In order: every user message is followed by its own reply.
    for asked, answered in zip(rows[::2], rows[1::2], strict=True):
        assert asked.role == "user" and answered.role == "assistant"
        assert f'"{asked.content}"' in answered.content
    earlier = sorted(int(r.content.split("(")[1].split()[0]) for r in rows[1::2])
    assert earlier == [min(2 * i, 20) for i in range(12)]


async def test_rate_limit_replies_once_then_stays_silent(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    responder = CountingResponder()
    service = await make_service(responder=responder, rate_limit_per_minute=3)
    user = new_user()
    replies = [await service.handle(msg(user, f"m{i}")) for i in range(6)]

    kinds = [r.kind for r in replies]
    assert kinds[:3] == [ReplyKind.ANSWER] * 3
    assert kinds[3:] == [ReplyKind.RATE_LIMITED] * 3
    assert replies[3].text and "try again in" in replies[3].text
    assert replies[4].text is None and replies[5].text is None
    assert len(responder.calls) == 3
    assert len(await messages_of(engine, user)) == 6  # limited messages are not stored
    rate_key = service.cache.keys.rate(await _user_id(engine, user))
    assert 0 < await redis.ttl(rate_key) <= 60


async def test_channel_config_sets_rate_limit_and_default_model(
    service: ConversationService, engine: AsyncEngine
) -> None:
    channel = f"chan{new_user()}"
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO channel_configs (channel_type, default_model, settings) "
                "VALUES (:c, 'channel-model', '{\"rate_limit_per_minute\": 1}')"
            ),
            {"c": channel},
        )
    user = new_user()
    first = await service.handle(msg(user, "a", channel=channel))
    second = await service.handle(msg(user, "b", channel=channel))
    assert first.model == "channel-model" and "model channel-model" in (first.text or "")
    assert second.kind is ReplyKind.RATE_LIMITED


async def test_a_rate_key_without_ttl_gets_one(
    service: ConversationService, engine: AsyncEngine, redis: Redis
) -> None:
    user = new_user()
    await service.handle(msg(user, "a"))
    rate_key = service.cache.keys.rate(await _user_id(engine, user))
    await redis.persist(rate_key)
    await service.handle(msg(user, "b"))
    assert 0 < await redis.ttl(rate_key) <= 60


async def test_model_resolution_order(service: ConversationService, engine: AsyncEngine) -> None:
    user = new_user()
    first = await service.handle(msg(user, "hi"))
    assert first.model == "gpt-4o-mini"
    await service.handle(msg(user, "/model llama3"))
    assert (await service.handle(msg(user, "hi"))).model == "llama3"
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE conversations SET model_override = 'pinned' WHERE id = :id"),
            {"id": first.conversation_id},
        )
    await flush_cache(service)
    assert (await service.handle(msg(user, "hi"))).model == "pinned"
    prefs = await fetch(
        engine, "SELECT preferred_model FROM users WHERE channel_user_id=:c", c=user
    )
    assert prefs[0].preferred_model == "llama3"
