"""Token quotas (bot/quotas.py) against real Postgres and Redis: counted in the turn's
own scripts, refused before the responder, rebuilt from Postgres when Redis lost them."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import setting_keys
from bot.bench.probes import COMMITS, CONTROL, WRITE, PgProbe
from bot.domain import ChatKind, IncomingMessage, ReplyKind, Scope
from bot.embedded import EmbeddedRedis
from bot.errors import BadInput
from bot.quotas import Counter as QuotaCounter
from bot.quotas import Holder, Period
from bot.service import ConversationService
from bot.tallies import Tally
from tests.support import CountingResponder, ServiceFactory, fetch, flush_cache, handled, new_user

USER_DAY = QuotaCounter(Holder.USER, Period.DAY)
CHAT_DAY = QuotaCounter(Holder.CHAT, Period.DAY)


def say(
    user: str, text: str, chat: str | None = None, thread: str | None = None
) -> IncomingMessage:
    kind = ChatKind.PRIVATE if chat is None else ChatKind.THREAD if thread else ChatKind.GROUP
    return IncomingMessage(
        "telegram", user, text, username=user, platform_message_id=uuid.uuid4().hex,
        chat_id=chat or user, thread_id=thread, chat_kind=kind,
    )  # fmt: skip


async def stored_tokens(engine: AsyncEngine, user: str) -> int:
    """Every token stored with the user's messages and the replies to them."""
    rows = await fetch(
        engine,
        "SELECT coalesce(sum(m.token_count), 0) AS n FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id "
        "WHERE u.channel_user_id = :user AND m.role <> 'system'",
        user=user,
    )
    return int(rows[0].n)


async def counted(service: ConversationService, redis: Redis, counter: QuotaCounter,
                  message: IncomingMessage) -> int | None:  # fmt: skip
    value = await redis.get(service.cache.keys.quota(counter, message, service.clock()))
    return None if value is None else int(value)


async def spend_until_refused(service: ConversationService, user: str, most: int = 30) -> int:
    """Messages answered before the quota refused one."""
    for answered in range(most):
        reply = await handled(service, say(user, f"tell me about number {answered}"))
        if reply.kind is ReplyKind.OVER_QUOTA:
            return answered
        assert reply.kind is ReplyKind.ANSWER, reply
    raise AssertionError(f"no refusal in {most} messages")


@pytest.mark.parametrize(
    ("now", "day_end", "month_end", "stamps"),
    [
        ("2026-12-31T23:59:59+00:00", "2027-01-01", "2027-01-01", ("2026-12-31", "2026-12")),
        ("2028-02-29T00:00:00+00:00", "2028-03-01", "2028-03-01", ("2028-02-29", "2028-02")),
        ("2026-06-15T22:30:00-05:00", "2026-06-17", "2026-07-01", ("2026-06-16", "2026-06")),
    ],
)
def test_periods_are_utc_days_and_months(
    now: str, day_end: str, month_end: str, stamps: tuple[str, str]
) -> None:
    at = datetime.fromisoformat(now)
    assert Period.DAY.end(at) == datetime.fromisoformat(f"{day_end}T00:00:00+00:00")
    assert Period.MONTH.end(at) == datetime.fromisoformat(f"{month_end}T00:00:00+00:00")
    assert (Period.DAY.stamp(at), Period.MONTH.stamp(at)) == stamps
    assert Period.MONTH.start(at) <= Period.DAY.start(at) <= at < Period.DAY.end(at)


async def test_a_used_up_quota_is_told_costs_nothing_and_starts_afresh_the_next_day(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    responder = CountingResponder()
    service = await make_service(responder=responder, quota_user_day_tokens=150)
    user = new_user()

    answered = await spend_until_refused(service, user)
    calls, spent = len(responder.calls), await stored_tokens(engine, user)

    assert answered >= 2 and spent >= 150
    assert await counted(service, redis, USER_DAY, say(user, "")) == spent  # Redis agrees
    refused = await handled(service, say(user, "and now?"))
    assert refused.kind is ReplyKind.OVER_QUOTA and refused.text is not None
    assert "You have used today's allowance of 150 tokens" in refused.text
    assert "starts afresh at 00:00 UTC" in refused.text
    assert len(responder.calls) == calls  # refused before the responder
    assert await stored_tokens(engine, user) == spent  # and nothing stored
    assert service.stats[Tally.OVER_QUOTA] == 2

    tomorrow = datetime.now(UTC) + timedelta(days=1)
    service.clock = lambda: tomorrow
    again = await handled(service, say(user, "a new day"))
    assert again.kind is ReplyKind.ANSWER
    assert await counted(service, redis, USER_DAY, say(user, "")) == (
        await stored_tokens(engine, user) - spent
    )  # the new day's counter holds only the new day's exchange


async def test_counters_are_rebuilt_from_postgres_after_a_flush(
    make_service: ServiceFactory, engine: AsyncEngine, redis: Redis
) -> None:
    service = await make_service(quota_user_day_tokens=150, quota_user_month_tokens=10**6)
    user = new_user()
    await spend_until_refused(service, user)
    spent = await stored_tokens(engine, user)

    assert await flush_cache(service) > 0
    refused = await handled(service, say(user, "after the flush"))

    assert refused.kind is ReplyKind.OVER_QUOTA  # a flush gives no fresh allowance
    assert service.stats[Tally.QUOTA_REBUILT] >= 2  # the first message, and after the flush
    for counter in (USER_DAY, QuotaCounter(Holder.USER, Period.MONTH)):
        assert await counted(service, redis, counter, say(user, "")) == spent


async def test_a_group_chat_quota_is_shared_by_its_members_and_threads(
    make_service: ServiceFactory, redis: Redis
) -> None:
    service = await make_service(quota_chat_day_tokens=100)
    alice, bob, chat = new_user(), new_user(), f"-100{uuid.uuid4().int % 10**9}"

    kinds = [(await handled(service, say(alice, f"q{n} " * 20, chat, "7"))).kind for n in range(6)]
    assert kinds[0] is ReplyKind.ANSWER and ReplyKind.OVER_QUOTA in kinds
    refused = await handled(service, say(bob, "my turn?", chat))
    in_dm = await handled(service, say(bob, "and here?"))

    assert refused.kind is ReplyKind.OVER_QUOTA
    assert refused.text is not None and refused.text.startswith("This chat has used")
    assert in_dm.kind is ReplyKind.ANSWER  # a DM counts on the writer's quota only
    assert (await counted(service, redis, CHAT_DAY, say(bob, "", chat)) or 0) >= 100

    await flush_cache(service)  # the chat's count, its thread's messages too, from Postgres
    assert (await handled(service, say(bob, "after a flush?", chat))).kind is ReplyKind.OVER_QUOTA


async def test_a_chat_sets_its_own_quota_but_its_admins_cannot(
    make_service: ServiceFactory,
) -> None:
    service = await make_service()
    user, chat = new_user(), f"-100{uuid.uuid4().int % 10**9}"
    group = Scope(ChatKind.GROUP, chat)
    await service.chats.change("telegram", group, {"quota_user_day_tokens": 1}, [])

    first = await handled(service, say(user, "hello", chat))
    second = await handled(service, say(user, "hello again", chat))
    elsewhere = await handled(service, say(user, "hello in a DM"))

    assert (first.kind, second.kind) == (ReplyKind.ANSWER, ReplyKind.OVER_QUOTA)
    assert elsewhere.kind is ReplyKind.ANSWER  # the chat's limit holds in the chat only
    with pytest.raises(BadInput, match="unknown key 'quota_user_day_tokens'"):
        setting_keys.parse_assignments(["quota_user_day_tokens=9"], [], setting_keys.ADMIN_KEYS)
    values, _ = setting_keys.parse_assignments(["quota_chat_month_tokens=9"], [])
    assert values == {"quota_chat_month_tokens": 9}  # an operator's (`bot ops config set`)


async def test_the_warm_path_reads_nothing_from_postgres_with_quotas_on(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(quota_user_day_tokens=10**6, quota_user_month_tokens=10**7)
    probe = PgProbe()
    probe.attach(service.store.engine)
    user = new_user()
    await handled(service, say(user, "first"))  # rebuilds the counters: a new writer
    before = probe.snapshot()
    reply = await handled(service, say(user, "second"))
    sent = probe.snapshot() - before

    assert reply.kind is ReplyKind.ANSWER
    assert sent == Counter({WRITE: 1, CONTROL: 2, COMMITS: 1, "checkouts": 1}), sent
    assert service.stats[Tally.QUOTA_REBUILT] == 1


async def test_without_redis_the_quota_is_read_from_postgres(
    make_service: ServiceFactory, own_redis: EmbeddedRedis, engine: AsyncEngine
) -> None:
    service = await make_service(
        redis_url=own_redis.url, redis_op_timeout_seconds=0.2, quota_user_day_tokens=150
    )
    user = new_user()
    own_redis.stop()

    await spend_until_refused(service, user)

    assert await stored_tokens(engine, user) >= 150
    assert service.stats[Tally.CACHE_UNAVAILABLE] > 0
