"""The Telegram adapter: python-telegram-bot for real against a local fake Bot API.

Real Postgres and Redis behind the service; no mocks. Every request the SDK sends and
every object the fake serves is checked against the vendored Bot API spec.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncEngine
from telegram import Bot

from bot.channels import telegram as telegram_adapter
from bot.channels.dispatch import Dispatcher
from bot.channels.registry import telegram_options
from bot.channels.telegram import SECRET_HEADER, TelegramAdapter
from bot.channels.telegram_updates import incoming_message, parse_update
from bot.config import Settings
from bot.domain import IncomingMessage, TextSink
from bot.emulators.telegram_api import (
    BOT_ID,
    BOT_USERNAME,
    TOKEN,
    FakeBotApi,
    Spec,
    entities,
    group_chat,
    message,
    private_chat,
    private_update,
    update,
    user,
)
from bot.errors import ConfigError, PlatformRejected, PlatformUnavailable
from bot.metrics import Metrics
from bot.responders import EchoResponder, Responder, ResponderRequest, ResponderResult
from tests.support import (
    GatedResponder,
    ServiceFactory,
    echo,
    fetch,
    free_port,
    messages_of,
    until,
    usernames,
)

pytestmark = pytest.mark.timeout(15)

WEBHOOK_SECRET = "s3cret-Token_for-tests"


class LongResponder(EchoResponder):
    """Answers with 9000 characters of words: more than two Telegram messages hold."""

    text = ("lorem ipsum " * 750).strip() + "!"

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        return ResponderResult(text=self.text, model_used="long")


@dataclass
class Running:
    adapter: TelegramAdapter
    dispatcher: Dispatcher
    task: asyncio.Task[None]


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(
    telegram: FakeBotApi,
    make_service: ServiceFactory,
    make_settings: Callable[..., Settings],
    redis: Redis,
) -> AsyncIterator[Start]:
    """Start adapters on the fake Bot API; each is stopped (and its run awaited) after."""
    started: list[Running] = []

    async def start_adapter(
        responder: Responder | None = None, dispatcher: Dispatcher | None = None, **overrides: Any
    ) -> Running:
        settings = make_settings(
            telegram_bot_token=TOKEN, telegram_api_base_url=telegram.base_url, **overrides
        )
        if dispatcher is None:
            dispatcher = Dispatcher(await make_service(responder=responder), Metrics())
        adapter = TelegramAdapter(telegram_options(settings), dispatcher)
        running = Running(adapter, dispatcher, asyncio.create_task(adapter.run()))
        started.append(running)
        await until(lambda: adapter.connected or running.task.done())
        if running.task.done():
            running.task.result()  # raise what stopped it
        return running

    yield start_adapter
    for running in started:
        await asyncio.wait_for(running.adapter.stop(), 10)
        await asyncio.wait_for(running.task, 10)


_user_ids = itertools.count(random.randrange(10**9, 2 * 10**9))


def new_id() -> int:
    """A Telegram user id no other test of this run uses."""
    return next(_user_ids)


# -- private chats ------------------------------------------------------------------------


async def test_private_message_is_answered_and_stored(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    await start()
    alice = user(new_id(), "alice")
    sent = await telegram.push(private_update(telegram, alice, "hi"))

    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    [reply] = telegram.sent
    assert reply["chat_id"] == alice["id"] and reply["text"] == echo("hi")
    assert "reply_parameters" not in reply  # a private chat needs no quote
    rows = await messages_of(engine, str(alice["id"]))
    assert [(r.role, r.content) for r in rows] == [("user", "hi"), ("assistant", echo("hi"))]
    assert rows[0].platform_message_id == f"{BOT_ID}:{sent['update_id']}"
    assert await usernames(engine, "telegram", str(alice["id"])) == ["alice"]


async def test_polling_fetches_messages_and_reactions_only_and_confirms(
    start: Start, telegram: FakeBotApi
) -> None:
    running = await start()
    bob = user(new_id(), "bob")
    sent = await telegram.push(private_update(telegram, bob, "yo"))
    await telegram.wait_for(lambda: len(telegram.sent) == 1)

    polls = telegram.calls_of("getUpdates")
    assert telegram.calls_of("deleteWebhook") and polls
    assert polls[0].params["allowed_updates"] == ["message", "message_reaction"]
    assert polls[0].params["timeout"] == 30
    await running.adapter.stop()
    assert telegram.confirmed == sent["update_id"] + 1  # confirmed on the way out
    assert not running.adapter.connected and running.task.done()

    # The worker runs the same adapter again after a crash: it starts afresh.
    again = asyncio.create_task(running.adapter.run())
    await until(lambda: running.adapter.connected)
    await telegram.push(private_update(telegram, bob, "again"))
    await telegram.wait_for(lambda: len(telegram.sent) == 2)
    await running.adapter.stop()
    await asyncio.wait_for(again, 5)


class GateForOne(EchoResponder):
    """Holds only the reply to `slow_text` until released; answers the rest at once."""

    def __init__(self, slow_text: str) -> None:
        self.slow_text = slow_text
        self.release = asyncio.Event()

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        if request.text == self.slow_text:
            await self.release.wait()
        return await super().respond(request, on_text)


async def in_inbox(engine: AsyncEngine, sent: dict[str, Any]) -> bool:
    """Whether the update `sent` is kept in the inbox (received, its reply not delivered)."""
    rows = await fetch(
        engine,
        "SELECT 1 FROM inbox WHERE channel_type = 'telegram' AND platform_message_id = :pid",
        pid=f"{BOT_ID}:{sent['update_id']}",
    )
    return bool(rows)


async def test_an_update_is_confirmed_once_kept_in_the_inbox_not_once_answered(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    responder = GateForOne("slow")
    await start(responder=responder)
    ann, bob = user(new_id(), "ann"), user(new_id(), "bob")
    slow = await telegram.push(private_update(telegram, ann, "slow"))
    await telegram.push(private_update(telegram, bob, "quick"))
    await telegram.wait_for(lambda: len(telegram.sent) == 1)  # the later one is answered

    polls_before = len(telegram.calls_of("getUpdates"))
    await asyncio.sleep(1.2)  # polling goes on, without spinning, for newer updates
    assert 1 <= len(telegram.calls_of("getUpdates")) - polls_before <= 6
    # Confirmed while its reply is still being written: the inbox holds it, and answers
    # it should this worker die now.
    assert telegram.confirmed > slow["update_id"]
    assert await in_inbox(engine, slow)

    responder.release.set()
    await telegram.wait_for(lambda: len(telegram.sent) == 2)
    await telegram.push(private_update(telegram, bob, "next"))
    await telegram.wait_for(lambda: len(telegram.sent) == 3)
    assert [m["text"] for m in telegram.sent] == [echo("quick"), echo("slow"), echo("next", 2)]
    for _ in range(100):  # delivered: deleted from the inbox (batched, within moments)
        if not await in_inbox(engine, slow):
            break
        await asyncio.sleep(0.05)
    assert not await in_inbox(engine, slow)


async def test_polling_takes_no_more_than_max_in_flight_updates_at_once(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telegram_adapter, "MAX_IN_FLIGHT", 2)  # 90 in production
    responder = GatedResponder()
    await start(responder=responder)
    people = [user(new_id(), f"p{n}") for n in range(3)]
    sent = [await telegram.push(private_update(telegram, p, "wait")) for p in people]

    await until_async(lambda: in_inbox(engine, sent[1]), "the second update kept")
    await asyncio.sleep(0.5)  # polling goes on, but takes no third one while two are answered
    assert telegram.confirmed == sent[2]["update_id"]  # the third one is still Telegram's
    assert not await in_inbox(engine, sent[2])
    responder.release.set()
    await telegram.wait_for(lambda: len(telegram.sent) == 3)


# -- groups -------------------------------------------------------------------------------


async def test_group_messages_not_addressed_to_the_bot_are_ignored(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    await start()
    group, carol, bot_sender = (
        group_chat(),
        user(new_id(), "carol"),
        user(new_id(), "otherbot", True),
    )
    mention = f"@{BOT_USERNAME} posting as the group"  # addressed, but not by a user
    mentioned = entities(mention, "mention", f"@{BOT_USERNAME}")
    ignored = [
        message(telegram, group, carol, "just chatting"),
        message(telegram, group, carol, "/help@some_other_bot"),
        message(telegram, group, carol, None, photo=[]),  # not text
        message(telegram, private_chat(bot_sender), bot_sender, "I am a bot"),
        message(telegram, group, carol, mention, sender_chat=group, entities=mentioned),
    ]
    for body in ignored:
        await telegram.push(update(telegram, body))
    edited = message(telegram, private_chat(carol), carol, "edited", edit_date=int(time.time()))
    await telegram.push(update(telegram, edited, kind="edited_message"))
    # An addressed message after them: once it is answered, the others were handled.
    dave = user(new_id(), "dave")
    await telegram.push(update(telegram, message(telegram, group, dave, "/help")))

    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    await asyncio.sleep(0.2)
    assert len(telegram.sent) == 1 and telegram.sent[0]["text"].startswith("Commands")
    assert await messages_of(engine, str(carol["id"])) == []
    assert await messages_of(engine, str(bot_sender["id"])) == []


async def test_group_mention_is_answered_without_the_mention(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    await start()
    group = group_chat()
    said = {
        f"@{BOT_USERNAME} what's up?": "what's up?",
        # After an emoji, so the entity's UTF-16 offset differs from the str index.
        f"👋 hey @{BOT_USERNAME.upper()}, how are you?": "👋 hey how are you?",
    }
    asked: dict[int, dict[str, Any]] = {}
    for text in said:
        sender = user(new_id(), None)  # no username: the full name is kept instead
        body = message(
            telegram, group, sender, text, entities=entities(text, "mention", f"@{BOT_USERNAME}")
        )
        asked[sender["id"]] = body
        await telegram.push(update(telegram, body))

    await telegram.wait_for(lambda: len(telegram.sent) == 2)
    by_message_id = {body["message_id"]: body for body in asked.values()}
    for reply in telegram.sent:  # each quotes the message it answers
        body = by_message_id[reply["reply_parameters"]["message_id"]]
        assert reply["reply_parameters"]["allow_sending_without_reply"] is True
        assert (reply["chat_id"], reply["text"]) == (group["id"], echo(said[body["text"]]))
    for sender_id, body in asked.items():
        rows = await messages_of(engine, str(sender_id))
        assert [r.content for r in rows] == [said[body["text"]], echo(said[body["text"]])]
        assert await usernames(engine, "telegram", str(sender_id)) == [f"User{sender_id}"]


async def test_reply_to_the_bot_in_a_group_is_answered(start: Start, telegram: FakeBotApi) -> None:
    await start()
    group, frank = group_chat(-100777, "group"), user(new_id(), "frank")
    bot_message = message(telegram, group, telegram.bot_user, "an earlier answer")
    other_message = message(telegram, group, user(new_id()), "someone else")
    await telegram.push(
        update(telegram, message(telegram, group, frank, "not me", reply_to_message=other_message))
    )
    await telegram.push(
        update(
            telegram, message(telegram, group, frank, "tell me more", reply_to_message=bot_message)
        )
    )

    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    await asyncio.sleep(0.2)
    assert [(m["chat_id"], m["text"]) for m in telegram.sent] == [
        (group["id"], echo("tell me more"))
    ]


# -- replies ------------------------------------------------------------------------------


async def test_long_reply_is_split_into_telegram_sized_messages(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    await start(responder=LongResponder())
    grace = user(new_id(), "grace")
    group = group_chat(-100888)
    text = f"@{BOT_USERNAME} talk"
    body = message(
        telegram, group, grace, text, entities=entities(text, "mention", f"@{BOT_USERNAME}")
    )
    await telegram.push(update(telegram, body))

    await telegram.wait_for(lambda: len(telegram.sent) == 3)
    parts = [m["text"] for m in telegram.sent]
    assert all(len(p) <= 4096 for p in parts) and {m["chat_id"] for m in telegram.sent} == {
        group["id"]
    }
    assert " ".join(parts) == LongResponder.text
    assert "reply_parameters" in telegram.sent[0]  # the first part says what it answers
    assert all("reply_parameters" not in m for m in telegram.sent[1:])
    rows = await messages_of(engine, str(grace["id"]))
    assert [r.content for r in rows] == ["talk", LongResponder.text]


async def test_redelivered_update_is_answered_once(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    await start()
    heidi = user(new_id(), "heidi")
    sent = await telegram.push(private_update(telegram, heidi, "once"))
    await telegram.wait_for(lambda: len(telegram.sent) == 1)

    await telegram.replay(sent)
    await telegram.wait_for(lambda: telegram.served.count(sent["update_id"]) == 2)
    after = await telegram.push(private_update(telegram, heidi, "twice"))
    await telegram.wait_for(lambda: len(telegram.sent) == 2)
    await asyncio.sleep(0.2)
    assert [m["text"] for m in telegram.sent] == [echo("once"), echo("twice", 2)]
    rows = await messages_of(engine, str(heidi["id"]))
    assert [r.platform_message_id for r in rows if r.role == "user"] == [
        f"{BOT_ID}:{sent['update_id']}",
        f"{BOT_ID}:{after['update_id']}",
    ]


# PTB 22 warns, making the RetryAfter, that retry_after becomes a timedelta one day.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_rate_limited_reply_arrives_once_after_retry_after(
    start: Start, telegram: FakeBotApi
) -> None:
    await start()
    ivan = user(new_id(), "ivan")
    telegram.rate_limited = 1
    await telegram.push(private_update(telegram, ivan, "hurry"))

    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    [limited] = telegram.calls_of("sendMessage", status=429)
    [delivered] = telegram.calls_of("sendMessage")
    assert delivered.params["text"] == echo("hurry") == limited.params["text"]
    assert delivered.at - limited.at >= 0.95  # waited the retry_after Telegram asked for
    await asyncio.sleep(0.3)
    assert len(telegram.sent) == 1


# -- replies from the inbox (send_to) ------------------------------------------------------

FORUM_TOPIC = 77


def topic_message(
    telegram: FakeBotApi, group: dict[str, Any], sender: dict[str, Any], said: str
) -> dict[str, Any]:
    """`sender` writing `said` to the bot (mentioned) in a forum topic of `group`."""
    text = f"@{BOT_USERNAME} {said}"
    return message(
        telegram, group, sender, text,
        entities=entities(text, "mention", f"@{BOT_USERNAME}"),
        message_thread_id=FORUM_TOPIC, is_topic_message=True,
    )  # fmt: skip


def as_incoming(
    body: dict[str, Any], telegram: FakeBotApi
) -> tuple[dict[str, Any], IncomingMessage]:
    """The update of `body` and the IncomingMessage the adapter makes of it: what the
    inbox keeps, and gives back to a sweep after a crash."""
    sent = update(telegram, body)
    parsed = parse_update(sent, Bot(TOKEN, base_url=telegram.base_url))
    assert parsed is not None
    incoming = incoming_message(parsed, BOT_ID, BOT_USERNAME)
    assert incoming is not None
    return sent, incoming


async def resumed(running: Running, incoming: IncomingMessage) -> None:
    """What a worker's sweep does with an event it took from the inbox."""
    assert (await running.dispatcher.receive(incoming)).taken
    await running.adapter.resume(incoming)


async def test_a_reply_from_the_inbox_goes_to_its_topic_quoting_its_message(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    running = await start()
    group, rosa = group_chat(-100555), user(new_id(), "rosa")
    body = topic_message(telegram, group, rosa, "still there?")
    _, incoming = as_incoming(body, telegram)
    assert incoming.reply_to == str(body["message_id"])

    await resumed(running, incoming)
    [reply] = telegram.sent
    assert (reply["chat_id"], reply["message_thread_id"]) == (group["id"], FORUM_TOPIC)
    assert reply["reply_parameters"]["message_id"] == body["message_id"]
    assert reply["text"] == echo("still there?")
    rows = await messages_of(engine, str(rosa["id"]))
    assert [r.content for r in rows] == ["still there?", echo("still there?")]


async def test_a_long_reply_from_the_inbox_is_split_the_first_part_quoting(
    start: Start, telegram: FakeBotApi
) -> None:
    running = await start(responder=LongResponder())
    sam = user(new_id(), "sam")
    body = message(telegram, private_chat(sam), sam, "talk, late")
    _, incoming = as_incoming(body, telegram)

    await resumed(running, incoming)
    parts = telegram.sent
    assert len(parts) == 3 and " ".join(p["text"] for p in parts) == LongResponder.text
    assert {p["chat_id"] for p in parts} == {sam["id"]}
    assert all("message_thread_id" not in p for p in parts)  # a private chat: no topic
    # Late, it says which message it answers (deleted meanwhile? it goes all the same).
    assert parts[0]["reply_parameters"] == {
        "message_id": body["message_id"],
        "allow_sending_without_reply": True,
    }
    assert all("reply_parameters" not in p for p in parts[1:])


async def test_a_reply_from_the_inbox_refused_for_good_is_not_tried_again(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    running = await start()
    group, tom = group_chat(-100556), user(new_id(), "tom")
    sent, incoming = as_incoming(topic_message(telegram, group, tom, "hello"), telegram)
    telegram.gone_chats.add(group["id"])  # the bot was removed from the group meanwhile

    assert await running.adapter.send_to(incoming, "an answer") is True  # done with
    await resumed(running, incoming)
    assert [c.status for c in telegram.calls_of("sendMessage", status=None)] == [403, 403]
    for _ in range(100):  # so the inbox lets it go
        if not await in_inbox(engine, sent):
            break
        await asyncio.sleep(0.05)
    assert not await in_inbox(engine, sent)

    await running.adapter.stop()  # no connection: not now, the inbox tries again later
    assert await running.adapter.send_to(incoming, "an answer") is False


# -- connection ---------------------------------------------------------------------------


async def test_polling_outage_is_ridden_out(start: Start, telegram: FakeBotApi) -> None:
    running = await start()
    telegram.updates_down = True
    await until(lambda: not running.adapter.connected)
    judy = user(new_id(), "judy")
    await telegram.push(private_update(telegram, judy, "back?"))
    telegram.updates_down = False

    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    assert running.adapter.connected and not running.task.done()
    assert telegram.calls_of("getUpdates", status=502)


async def test_rejected_token_or_no_server_makes_run_raise(
    make_settings: Callable[..., Settings], telegram: FakeBotApi, make_service: ServiceFactory
) -> None:
    dispatcher = Dispatcher(await make_service(), Metrics())
    wrong = "999:not-the-token"
    adapter = TelegramAdapter(
        telegram_options(
            make_settings(telegram_bot_token=wrong, telegram_api_base_url=telegram.base_url)
        ),
        dispatcher,
    )
    with pytest.raises(PlatformRejected) as rejected:
        await asyncio.wait_for(adapter.run(), 10)
    assert wrong not in str(rejected.value) and rejected.value.__cause__ is None
    assert not adapter.connected

    closed = f"http://127.0.0.1:{free_port()}/bot"
    adapter = TelegramAdapter(
        telegram_options(make_settings(telegram_bot_token=TOKEN, telegram_api_base_url=closed)),
        dispatcher,
    )
    with pytest.raises(PlatformUnavailable):
        await asyncio.wait_for(adapter.run(), 10)
    await adapter.stop()  # what the worker does before restarting it: a no-op now


def test_configuration_is_checked_up_front(make_settings: Callable[..., Settings]) -> None:
    dispatcher: Any = None
    with pytest.raises(ConfigError, match="TELEGRAM_BOT_TOKEN"):
        TelegramAdapter(telegram_options(make_settings(telegram_bot_token=None)), dispatcher)
    for secret in (None, "has spaces", "x" * 257):
        with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_SECRET"):
            TelegramAdapter(
                telegram_options(
                    make_settings(
                        telegram_bot_token=TOKEN,
                        telegram_webhook_url="https://bot.example.com/hook",
                        telegram_webhook_secret=secret,
                    )
                ),
                dispatcher,
            )


# -- shutdown -----------------------------------------------------------------------------


async def test_stop_lets_a_reply_in_flight_finish(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    responder = GatedResponder()
    running = await start(responder=responder)
    kim = user(new_id(), "kim")
    await telegram.push(private_update(telegram, kim, "slow one"))
    await asyncio.wait_for(responder.started.wait(), 5)
    await telegram.wait_for(lambda: bool(telegram.calls_of("sendChatAction")))  # "typing…"

    stopping = asyncio.create_task(running.adapter.stop())
    await asyncio.sleep(0.3)
    assert not stopping.done() and not running.adapter.connected  # no longer polling, waiting
    responder.release.set()
    await asyncio.wait_for(stopping, 5)

    assert [m["text"] for m in telegram.sent] == [echo("slow one")]
    assert telegram.calls_of("sendChatAction")[0].params == {
        "chat_id": kim["id"],
        "action": "typing",
    }
    rows = await messages_of(engine, str(kim["id"]))
    assert [r.role for r in rows] == ["user", "assistant"]
    assert running.task.done() and running.task.exception() is None


async def test_updates_refused_at_shutdown_stay_unconfirmed_for_the_restart(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    """The worker's order: close the dispatcher, drain, stop the adapter; then a restart."""
    first = await start()
    leo = user(new_id(), "leo")
    first.dispatcher.close()
    late = await telegram.push(private_update(telegram, leo, "late"))
    await telegram.wait_for(lambda: late["update_id"] in telegram.served)
    await asyncio.sleep(0.2)
    assert await first.dispatcher.drain(5)
    await first.adapter.stop()

    assert telegram.sent == [] and await messages_of(engine, str(leo["id"])) == []
    assert telegram.confirmed <= late["update_id"]  # Telegram still holds it

    service = first.dispatcher.service
    await start(dispatcher=Dispatcher(service, Metrics()))
    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    assert telegram.sent[0]["text"] == echo("late")
    assert [r.content for r in await messages_of(engine, str(leo["id"]))] == ["late", echo("late")]


async def test_the_adapter_runs_again_after_a_stop(start: Start, telegram: FakeBotApi) -> None:
    """What the worker does after a crash: stop() the adapter, then run() it again."""
    running = await start()
    await running.adapter.stop()
    await asyncio.wait_for(running.task, 10)
    again = asyncio.create_task(running.adapter.run())
    try:
        await until(lambda: running.adapter.connected or again.done())
        mia = user(new_id(), "mia")
        await telegram.push(private_update(telegram, mia, "back"))
        await telegram.wait_for(lambda: len(telegram.sent) == 1)
    finally:
        await asyncio.wait_for(running.adapter.stop(), 10)
        await asyncio.wait_for(again, 10)
    assert telegram.sent[0]["text"] == echo("back")


# -- webhook ------------------------------------------------------------------------------


async def start_webhook(start: Start, **given: Any) -> tuple[Running, str]:
    """An adapter taking updates by webhook; its URL on this machine."""
    port = free_port()
    running = await start(
        telegram_webhook_url="https://bot.example.com/telegram/hook",
        telegram_webhook_listen="127.0.0.1",
        telegram_webhook_port=port,
        telegram_webhook_secret=WEBHOOK_SECRET,
        **given,
    )
    return running, f"http://127.0.0.1:{port}/telegram/hook"


@pytest.fixture
async def webhook(start: Start) -> tuple[Running, str]:
    return await start_webhook(start)


async def post(url: str, body: bytes, secret: str | None = WEBHOOK_SECRET) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as r,
    ):
        return r.status


def as_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


async def test_webhook_is_set_with_the_secret(
    webhook: tuple[Running, str], telegram: FakeBotApi
) -> None:
    assert telegram.webhook == {
        "url": "https://bot.example.com/telegram/hook",
        "secret_token": WEBHOOK_SECRET,
        "allowed_updates": ["message", "message_reaction"],
    }
    assert telegram.calls_of("getUpdates") == []


async def test_webhook_with_the_secret_is_answered_once(
    webhook: tuple[Running, str], telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    _, url = webhook
    mia = user(new_id(), "mia")
    body = private_update(telegram, mia, "via webhook")
    assert telegram.spec.check_object("Update", body) == []

    assert await post(url, as_json(body)) == 200
    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    assert await post(url, as_json(body)) == 200  # Telegram re-sends after a timeout
    await asyncio.sleep(0.3)
    assert [(m["chat_id"], m["text"]) for m in telegram.sent] == [(mia["id"], echo("via webhook"))]
    rows = await messages_of(engine, str(mia["id"]))
    assert [r.role for r in rows] == ["user", "assistant"]


async def test_webhook_refuses_wrong_secret_and_bad_bodies(
    webhook: tuple[Running, str], telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    _, url = webhook
    nick = user(new_id(), "nick")
    body = as_json(private_update(telegram, nick, "let me in"))

    assert await post(url, body, secret="wrong-secret") == 403
    assert await post(url, body, secret=None) == 403
    assert await post(url, body, secret=WEBHOOK_SECRET[:-1]) == 403
    assert await post(url, b'{"update_id": 1, "message": ', secret=WEBHOOK_SECRET) == 400
    assert await post(url, b"\xff\xfe not utf-8", secret=WEBHOOK_SECRET) == 400
    assert await post(url, b'["not", "an", "update"]', secret=WEBHOOK_SECRET) == 400
    assert await post(url, b'{"message": {"text": "no ids"}}', secret=WEBHOOK_SECRET) == 400
    await asyncio.sleep(0.2)
    assert telegram.sent == [] and await messages_of(engine, str(nick["id"])) == []


async def test_an_update_postgres_refuses_for_good_is_answered_not_held_up(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    """JSONB holds no NUL character: such an update cannot be kept in the inbox, and
    would be refused again each time it came; it is answered without the inbox (the
    service stores its text cleaned) and the updates after it are not held up."""
    await start()
    uma = user(new_id(), "uma")
    odd = await telegram.push(private_update(telegram, uma, "nul\x00here"))
    await telegram.push(private_update(telegram, uma, "after it"))

    await telegram.wait_for(lambda: len(telegram.sent) == 2)
    assert [m["text"] for m in telegram.sent] == [echo("nulhere"), echo("after it", 2)]
    assert telegram.served.count(odd["update_id"]) == 1 and not await in_inbox(engine, odd)


async def test_webhook_answers_503_and_keeps_nothing_when_postgres_cannot_store(
    start: Start, telegram: FakeBotApi, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    dispatcher = await without_postgres(make_service)
    _, url = await start_webhook(start, dispatcher=dispatcher)
    pat = user(new_id(), "pat")
    body = private_update(telegram, pat, "are you there?")

    assert await post(url, as_json(body)) == 503  # so Telegram delivers it again later
    await asyncio.sleep(0.3)
    assert telegram.sent == [] and not await in_inbox(engine, body)
    assert adapter_errors(dispatcher) == 0


async def test_webhook_answers_200_only_once_the_update_is_kept(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    responder = GatedResponder()
    _, url = await start_webhook(start, responder=responder)
    quinn = user(new_id(), "quinn")
    body = private_update(telegram, quinn, "keep me")

    async with engine.connect() as locker, locker.begin():
        # The inbox takes no row while the test holds this lock: the update cannot be kept.
        await locker.execute(sql("LOCK TABLE inbox IN SHARE MODE"))
        posting = asyncio.create_task(post(url, as_json(body)))
        await until_async(lambda: waiting_for_inbox(engine), "the update's row waiting")
        assert not posting.done()  # no 200 for an update not kept
    assert await posting == 200

    # Acknowledged: kept, while its reply is still being written.
    await asyncio.wait_for(responder.started.wait(), 5)
    assert await in_inbox(engine, body) and telegram.sent == []
    responder.release.set()
    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    assert telegram.sent[0]["text"] == echo("keep me")


async def test_webhook_update_kept_as_the_worker_stops_is_still_answered(
    start: Start, telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    """Received just before the dispatcher closed, and acknowledged: Telegram will not
    send it again, so this worker answers it while it drains."""
    running, url = await start_webhook(start)
    rex = user(new_id(), "rex")
    body = private_update(telegram, rex, "just in time")

    async with engine.connect() as locker, locker.begin():
        await locker.execute(sql("LOCK TABLE inbox IN SHARE MODE"))
        posting = asyncio.create_task(post(url, as_json(body)))
        await until_async(lambda: waiting_for_inbox(engine), "the update's row waiting")
        running.dispatcher.close()  # SIGTERM while the update is being kept
    assert await posting == 200

    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    assert telegram.sent[0]["text"] == echo("just in time")


async def waiting_for_inbox(engine: AsyncEngine) -> bool:
    rows = await fetch(
        engine, "SELECT 1 FROM pg_locks WHERE relation = 'inbox'::regclass AND NOT granted"
    )
    return bool(rows)


async def until_async(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(250):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within 5 s")


async def test_webhook_answers_503_while_shutting_down(
    webhook: tuple[Running, str], telegram: FakeBotApi, engine: AsyncEngine
) -> None:
    running, url = webhook
    olga = user(new_id(), "olga")
    body = private_update(telegram, olga, "at closing time")
    running.dispatcher.close()
    assert await post(url, as_json(body)) == 503  # so Telegram delivers it again later
    assert await messages_of(engine, str(olga["id"])) == []


# -- the spec checker itself --------------------------------------------------------------


def test_spec_checker_catches_what_telegram_would_refuse() -> None:
    spec = Spec()
    assert spec.check_call("sendMessage", {"chat_id": 1, "text": "hi"}) == []
    assert spec.check_call("sendMessage", {"text": "hi"}) == [
        "sendMessage.chat_id: required but missing"
    ]
    assert spec.check_call("sendMessage", {"chat_id": 1, "text": "hi", "colour": "red"}) == [
        "sendMessage.colour: unknown field"
    ]
    assert spec.check_call("sendMessage", {"chat_id": 1.5, "text": "hi"}) != []
    good = {
        "update_id": 1,
        "message": {"message_id": 2, "date": 0, "chat": {"id": 3, "type": "private"}},
    }
    assert spec.check_object("Update", good) == []
    bad = {"update_id": 1, "message": {"message_id": 2, "chat": {"id": "3"}}}
    assert len(spec.check_object("Update", bad)) == 1  # the message is not a Message


# -- the last guard -----------------------------------------------------------------------


class BrokenResponder(EchoResponder):
    """A responder with a bug for one text: an error the service has no answer for."""

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        if request.text == "boom":
            raise RuntimeError("responder bug")
        return await super().respond(request, on_text)


def adapter_errors(dispatcher: Dispatcher) -> float:
    value = dispatcher.metrics.registry.get_sample_value(
        "bot_adapter_errors_total", {"channel": "telegram"}
    )
    return value or 0.0


async def test_unexpected_error_is_logged_counted_and_polling_goes_on(
    start: Start, telegram: FakeBotApi, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start(BrokenResponder())
    kim = user(new_id(), "kim")
    broken = await telegram.push(private_update(telegram, kim, "boom"))
    await telegram.push(private_update(telegram, kim, "fine"))

    await telegram.wait_for(lambda: len(telegram.sent) == 1)
    # "boom" was stored before the responder was asked (a streamed reply's rule).
    assert telegram.sent[0]["text"] == echo("fine", 1)
    await until(lambda: adapter_errors(running.dispatcher) == 1)
    (record,) = [r for r in caplog.records if str(broken["update_id"]) in r.getMessage()]
    assert record.levelname == "ERROR" and record.exc_info is not None  # with its traceback
    # A broken update is not fetched again and again: the offset moved past it.
    await telegram.wait_for(lambda: telegram.confirmed > broken["update_id"])


async def without_postgres(make_service: ServiceFactory) -> Dispatcher:
    """A dispatcher whose service's Postgres is not there (a closed port): it fails fast."""
    service = await make_service(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/gone",
        db_connect_timeout_seconds=0.5,
        db_retry_deadline_seconds=1.0,
    )
    return Dispatcher(service, Metrics())


async def test_an_update_postgres_cannot_keep_stays_unconfirmed_and_comes_again(
    start: Start, telegram: FakeBotApi, make_service: ServiceFactory
) -> None:
    dispatcher = await without_postgres(make_service)
    await start(dispatcher=dispatcher)
    lea = user(new_id(), "lea")
    sent = await telegram.push(private_update(telegram, lea, "hello?"))

    # Not kept: not confirmed, and fetched again and again (to be kept once Postgres is
    # back), paced rather than at once.
    await telegram.wait_for(lambda: telegram.served.count(sent["update_id"]) >= 2)
    assert telegram.confirmed <= sent["update_id"]
    assert telegram.sent == []  # nobody answers what is not kept
    assert adapter_errors(dispatcher) == 0  # an outage, not a bug
