"""A chat's settings over its platform's: applied in that chat (and its threads) only,
cached in Redis (a chat without settings too), followed at once by a running worker when
ops change them, and read from Postgres when Redis is away."""

from __future__ import annotations

import asyncio
import uuid

from bot.cache.chat_configs import ChatConfigCache, Place
from bot.chat_configs import change_chat_config
from bot.domain import ChatKind, IncomingMessage, ReplyKind
from bot.service import ConversationService
from tests.support import CountingResponder, ServiceFactory, fetch, free_port, new_user


def say(
    user: str, text: str, chat: str | None = None, thread: str | None = None
) -> IncomingMessage:
    kind = ChatKind.PRIVATE if chat is None else (ChatKind.THREAD if thread else ChatKind.GROUP)
    return IncomingMessage(
        "telegram", user, text, platform_message_id=uuid.uuid4().hex,
        chat_id=chat or user, thread_id=thread, chat_kind=kind,
    )  # fmt: skip


def new_chat() -> str:
    return f"-100{uuid.uuid4().int % 10**9}"


async def set_chat(service: ConversationService, place: Place, **values: object) -> None:
    cache = ChatConfigCache(service.cache.redis, service.cache.keys, service.cache.guard)
    await change_chat_config(service.store.chat_configs, cache, place, dict(values), [])


async def test_a_chats_settings_apply_there_and_in_its_threads_only(
    make_service: ServiceFactory,
) -> None:
    responder = CountingResponder()
    service = await make_service(responder=responder)
    chat, alice = new_chat(), new_user()
    await set_chat(service, Place("telegram", chat), default_model="chat-model", temperature=0.1)
    await set_chat(service, Place("telegram", chat, "7"), system_prompt="Answer in haiku.")

    in_chat = await service.handle(say(alice, "hi", chat))
    in_thread = await service.handle(say(alice, "hi", chat, "7"))
    private = await service.handle(say(alice, "hi"))

    assert in_chat.model == "chat-model" and in_thread.model == "chat-model"
    assert private.model == service.settings.default_model
    chat_request, thread_request, dm_request = responder.calls
    assert chat_request.channel_settings == {"temperature": 0.1}
    assert thread_request.channel_settings == {
        "temperature": 0.1,
        "system_prompt": "Answer in haiku.",
    }
    assert dm_request.channel_settings == {}


async def test_a_muted_chat_is_ignored_and_nothing_is_stored(
    service: ConversationService,
) -> None:
    chat, bob = new_chat(), new_user()
    await set_chat(service, Place("telegram", chat), muted=True)

    reply = await service.handle(say(bob, "anyone?", chat))
    private = await service.handle(say(bob, "and here?"))

    assert reply.kind is ReplyKind.MUTED and reply.text is None
    assert private.kind is ReplyKind.ANSWER
    assert (
        await fetch(
            service.store.engine,
            "SELECT 1 FROM conversations WHERE scope = :s",
            s=f"chat:{chat}",
        )
        == []
    )


async def test_a_chat_without_settings_is_cached_as_none(service: ConversationService) -> None:
    chat = new_chat()
    await service.handle(say(new_user(), "hi", chat))

    key = service.cache.keys.chat_config("telegram", chat)
    assert await service.cache.redis.get(key) == b"none"  # no Postgres read per message


async def test_a_running_worker_follows_a_change_at_once(
    make_service: ServiceFactory,
) -> None:
    worker, ops_side = await make_service(), await make_service()
    await worker.chats.start()
    try:
        assert worker.chats.listening.is_set()
        chat, carol = new_chat(), new_user()
        before = await worker.handle(say(carol, "one", chat))  # now held in its memory
        await set_chat(ops_side, Place("telegram", chat), default_model="changed-model")
        models = []
        async with asyncio.timeout(5):
            while not models or models[-1] != "changed-model":
                await asyncio.sleep(0.05)
                models.append((await worker.handle(say(carol, "again", chat))).model)
        assert before.model == worker.settings.default_model
        assert len(models) <= 3  # at once: not after CHANNEL_CONFIG_TTL_SECONDS
    finally:
        await worker.chats.stop()


async def test_without_redis_postgres_answers(make_service: ServiceFactory) -> None:
    chat = new_chat()
    writer = await make_service()
    await set_chat(writer, Place("telegram", chat), default_model="from-postgres")
    lonely = await make_service(redis_url=f"redis://127.0.0.1:{free_port()}/0")

    reply = await lonely.handle(say(new_user(), "hi", chat))

    assert reply.kind is ReplyKind.ANSWER and reply.model == "from-postgres"
