"""`bot ops event`: a platform event's claim in Redis beside what Postgres stored."""

from __future__ import annotations

import pytest

from bot.cache.events import EventState
from bot.ops.events import NO_CLAIM_NOT_STORED, NO_CLAIM_STORED
from bot.service import ConversationService
from tests.ops.conftest import Ops
from tests.support import flush_cache, handled, msg, new_user

pytestmark = pytest.mark.timeout(30)


async def test_an_event_answered_and_delivered_is_done_with_its_rows(
    ops: Ops, service: ConversationService
) -> None:
    channel, user = "console", new_user()
    reply = await handled(service, msg(user, "hello", pid=f"{user}-ev-1", channel=channel))
    await service.close()  # the delivery mark is written now, not within 50 ms

    data = (await ops("event", channel, f"{user}-ev-1", "--json")).data

    assert data["redis"]["state"] == "done" and data["meaning"] == EventState.DONE.meaning
    assert 0 < data["redis"]["ttl_seconds"] <= service.settings.dedup_ttl_seconds
    stored = data["postgres"]
    assert stored["conversation_id"] == str(reply.conversation_id)
    assert stored["channel_user_id"] == user and stored["reply_id"] is not None


async def test_an_event_answered_but_not_yet_delivered(
    ops: Ops, service: ConversationService
) -> None:
    channel, user = "console", new_user()
    await service.handle(msg(user, "hello", pid=f"{user}-ev-2", channel=channel))  # not delivered

    data = (await ops("event", channel, f"{user}-ev-2", "--json")).data

    assert data["redis"]["state"] == "answered" and data["redis"]["answered_at"] is not None
    assert data["meaning"] == EventState.ANSWERED.meaning


async def test_postgres_still_knows_an_event_redis_forgot(
    ops: Ops, service: ConversationService
) -> None:
    channel, user = "console", new_user()
    await handled(service, msg(user, "hello", pid=f"{user}-ev-3", channel=channel))
    await service.close()
    await flush_cache(service)

    data = (await ops("event", channel, f"{user}-ev-3", "--json")).data
    table = await ops("event", channel, f"{user}-ev-3")

    assert data["redis"]["value"] is None and data["meaning"] == NO_CLAIM_STORED
    assert data["postgres"]["channel_user_id"] == user
    assert table.code == 0 and "unique key" in table.out


async def test_an_unknown_event_is_neither_claimed_nor_stored(ops: Ops) -> None:
    data = (await ops("event", "console", f"never-seen-{new_user()}", "--json")).data

    assert data["redis"]["state"] is None and data["postgres"] is None
    assert data["meaning"] == NO_CLAIM_NOT_STORED
