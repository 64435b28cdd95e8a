"""Discord and the durable inbox (bot/inbox.py), through discord.py and the local Discord.

Discord never delivers a message again, so each one is in Postgres as it arrives,
before the responder is asked; one that Postgres cannot keep is answered that the bot
cannot answer now. A message taken from the inbox (its worker died) is answered with
`send_to`, from its plain data alone: in its channel, thread or DM, as a reply to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ChatKind, IncomingMessage, ReplyKind, TextSink
from bot.emulators.discord_api import FakeDiscord, Json, snowflake, user
from bot.errors import ResponderUnavailable
from bot.responders import ResponderRequest, ResponderResult
from bot.service import DEFERRED_TEXT, UNAVAILABLE_TEXT
from bot.store.inbox import Taken
from tests.channels import test_discord
from tests.channels.test_discord import LongResponder, StartBot, answered, user_rows
from tests.support import (
    CountingResponder,
    GatedResponder,
    ServiceFactory,
    echo,
    fetch,
    free_port,
)
from tests.test_inbox import Failing

start_bot = test_discord.start_bot  # the fixture: the adapter on the local Discord
SHORT_LEASE = {"inbox_lease_seconds": 1.0, "inbox_sweep_seconds": 0.2}


async def inbox_of(engine: AsyncEngine, discord_user: Json) -> list[str]:
    """The platform ids of the user's Discord messages in the inbox, oldest first."""
    rows = await fetch(
        engine,
        """SELECT platform_message_id FROM inbox
           WHERE channel_type = 'discord' AND message->>'channel_user_id' = :user ORDER BY seq""",
        user=discord_user["id"],
    )
    return [row.platform_message_id for row in rows]


class InboxWitness(GatedResponder):
    """Held until released, like a slow LLM; when asked, it looks in the inbox for the
    messages of the writer it answers."""

    def __init__(self, engine: AsyncEngine, writer: Json) -> None:
        super().__init__()
        self.engine, self.writer = engine, writer
        self.seen_in_inbox: list[list[str]] = []

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        self.seen_in_inbox.append(await inbox_of(self.engine, self.writer))
        return await super().respond(request, on_text)


async def test_a_message_is_in_the_inbox_before_the_responder_is_asked(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    rita = user("rita")
    responder = InboxWitness(engine, rita)
    await start_bot(responder)
    message = discord_server.message(rita, "keep me")
    await discord_server.push_message(message)
    await asyncio.wait_for(responder.started.wait(), 5)

    assert responder.seen_in_inbox == [[message["id"]]]
    assert discord_server.posts(message["channel_id"]) == []  # still at the "LLM"
    responder.release.set()
    await discord_server.wait_for(lambda: discord_server.posts(message["channel_id"]))
    assert [p["content"] for p in discord_server.posts(message["channel_id"])] == [echo("keep me")]
    assert await user_rows(engine, rita) == [
        ("user", "keep me", message["id"]),
        ("assistant", echo("keep me"), None),
    ]

    async def delivered() -> bool:  # and so gone from the inbox
        return not await inbox_of(engine, rita)

    await eventually(delivered, "the delivered message deleted from the inbox")


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll an async condition (a query) until it holds, for at most 5 s."""
    try:
        async with asyncio.timeout(5):
            while not await condition():  # noqa: ASYNC110 - a query, not an event here
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what}: not within 5 s") from None


async def test_a_message_postgres_cannot_keep_is_answered_that_the_bot_cannot_answer(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    """Discord will not deliver it again: the writer is told, and nothing else is done
    (the responder is not asked, nothing is stored, nothing counted as an error)."""
    responder = CountingResponder()
    bot = await start_bot(
        responder,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/gone",
        db_connect_timeout_seconds=0.5,
        db_retry_deadline_seconds=1.0,
    )
    sam = user("sam")
    message = discord_server.message(sam, "anyone home?")
    assert await answered(discord_server, message) == [UNAVAILABLE_TEXT]

    assert bot.dispatcher.seen == []  # never handed to the service to answer
    assert responder.calls == []
    assert await inbox_of(engine, sam) == []
    assert await user_rows(engine, sam) == []
    assert bot.sample("bot_adapter_errors_total") == 0
    await discord_server.wait_for(lambda: bot.sent() == 1)


async def test_a_message_another_worker_holds_is_left_to_it(
    start_bot: StartBot,
    discord_server: FakeDiscord,
    engine: AsyncEngine,
    make_service: ServiceFactory,
) -> None:
    """The same message kept by another live worker first (two workers on one shard
    during a handover): this one says nothing."""
    bot = await start_bot()
    other = await make_service()
    tom = user("tom")
    message = discord_server.message(tom, "who answers?")
    held = IncomingMessage(
        "discord", tom["id"], "who answers?", "tom", message["id"], message["channel_id"]
    )
    assert (await other.receive(held)).taken

    await discord_server.push_message(message)
    await answered(discord_server, discord_server.message(user("uma"), "probe"))
    assert discord_server.posts(message["channel_id"]) == []
    assert [m.text for m in bot.dispatcher.seen] == ["probe"]
    assert await inbox_of(engine, tom) == [message["id"]]  # still the other's
    assert await user_rows(engine, tom) == []
    other.delivered(held, ReplyKind.ANSWER)  # the other worker answered it: no leftover
    await other.inbox.flush()


def place_of(server: FakeDiscord, where: str, author: Json) -> Json:
    """A message to the bot in a DM, the server's text channel or its thread."""
    me = server.bot
    if where == "dm":
        return server.message(author, "hello")
    channel = server.thread_id if where == "thread" else server.channel_id
    return server.message(
        author, f"<@{me['id']}> hello", guild=True, channel_id=channel, mentions=(me,)
    )


@pytest.mark.parametrize("where", ["dm", "channel", "thread"])
async def test_send_to_replies_to_the_message_where_it_was_written(
    start_bot: StartBot, discord_server: FakeDiscord, where: str
) -> None:
    """From the message as the adapter made it (what the inbox keeps) alone, with no
    discord.py object: in its DM channel, server channel or thread, as a reply to it."""
    bot = await start_bot()
    message = place_of(discord_server, where, user("vera"))
    await answered(discord_server, message)
    (incoming,) = bot.dispatcher.seen

    assert await bot.adapter.send_to(incoming, "a late answer")
    channel = message["channel_id"]
    await discord_server.wait_for(lambda: len(discord_server.posts(channel)) == 2)
    late = discord_server.posts(channel)[1]
    assert late["content"] == "a late answer"
    assert late["message_reference"] == {
        "type": 0, "message_id": int(message["id"]), "channel_id": int(channel),
        "fail_if_not_exists": False,  # the message deleted since: the reply goes all the same
    }  # fmt: skip
    assert late["allowed_mentions"] == {"parse": []}  # replied_user absent: no ping
    await discord_server.wait_for(lambda: bot.sent() == 2)


async def test_send_to_splits_a_long_reply_the_first_part_answering_the_message(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    bot = await start_bot()
    message = discord_server.message(user("walt"), "hi")
    await answered(discord_server, message)
    (incoming,) = bot.dispatcher.seen

    assert await bot.adapter.send_to(incoming, LongResponder.text)
    channel = message["channel_id"]
    await discord_server.wait_for(lambda: len(discord_server.posts(channel)) == 4)
    parts = discord_server.posts(channel)[1:]
    assert " ".join(p["content"] for p in parts) == LongResponder.text
    assert all(len(p["content"]) <= 2000 for p in parts)
    assert [p.get("message_reference", {}).get("message_id") for p in parts] == [
        int(message["id"]), None, None
    ]  # fmt: skip


@pytest.mark.parametrize("refusal", ["channel deleted", "no permission"])
async def test_send_to_a_place_discord_refuses_for_good_is_done_with(
    start_bot: StartBot,
    discord_server: FakeDiscord,
    caplog: pytest.LogCaptureFixture,
    refusal: str,
) -> None:
    """404 Unknown Channel, 403 Missing Permissions: logged, and True, so that the
    inbox does not try again forever."""
    bot = await start_bot()
    message = discord_server.message(user("xena"), "hi")
    await answered(discord_server, message)
    (incoming,) = bot.dispatcher.seen
    channel = message["channel_id"]
    refusing = discord_server.gone_channels if refusal == "channel deleted" else (
        discord_server.forbidden_channels
    )  # fmt: skip
    refusing.add(channel)

    assert await bot.adapter.send_to(incoming, "too late")
    status = 404 if refusal == "channel deleted" else 403
    posts = discord_server.calls_to("POST", f"/channels/{channel}/messages")
    assert [call.status for call in posts] == [200, status]  # asked once: not retried
    assert "late reply refused by Discord for good" in caplog.text


async def test_send_to_while_disconnected_is_tried_again_later(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    bot = await start_bot()
    message = discord_server.message(user("yuri"), "hi")
    await answered(discord_server, message)
    (incoming,) = bot.dispatcher.seen
    await bot.adapter.stop()

    assert not await bot.adapter.send_to(incoming, "not now")
    assert len(discord_server.posts(message["channel_id"])) == 1


async def test_a_message_a_dead_worker_kept_is_answered_in_its_thread(
    start_bot: StartBot,
    discord_server: FakeDiscord,
    engine: AsyncEngine,
    make_service: ServiceFactory,
) -> None:
    """What the worker's sweep does (bot/worker.py): take the lapsed event, answer it
    with `resume`. The event went through the inbox's JSON and back."""
    bot = await start_bot(**SHORT_LEASE)
    dead = await make_service(**SHORT_LEASE)
    zoe = user("zoe")
    kept = IncomingMessage(
        "discord", zoe["id"], "are you still there?", "zoe", snowflake(),
        discord_server.channel_id, discord_server.thread_id, ChatKind.THREAD,
    )  # fmt: skip
    assert (await dead.receive(kept)).taken  # then that worker died, its reply unsent

    taken: list[Taken] = []

    async def lapsed() -> bool:  # its lease runs out (others' left by earlier tests lapse again)
        found = await bot.service.inbox.take(["discord"], 100)
        taken.extend(
            t for t in found if t.message["platform_message_id"] == kept.platform_message_id
        )
        return bool(taken)

    await eventually(lapsed, "the dead worker's message taken")
    (event,) = taken
    message = bot.service.adopt(event)
    assert message == kept
    await bot.adapter.resume(message)

    (reply,) = discord_server.posts(discord_server.thread_id)
    assert reply["content"] == echo("are you still there?")
    assert reply["message_reference"]["message_id"] == int(kept.platform_message_id or 0)
    assert discord_server.posts(discord_server.channel_id) == []
    await bot.service.inbox.flush()
    assert await inbox_of(engine, zoe) == []  # delivered: done with
    assert [row[:2] for row in await user_rows(engine, zoe)] == [
        ("user", "are you still there?"),
        ("assistant", echo("are you still there?")),
    ]


async def test_messages_are_kept_in_the_order_discord_sent_them(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    """Each message is its own discord.py task, and Postgres takes concurrent inserts in
    any order: the inbox, which answers a writer's messages in the order it kept them,
    must keep them in the gateway's."""
    responder = GatedResponder()
    await start_bot(responder)
    ada, channel = user("ada"), snowflake()
    messages = [discord_server.message(ada, f"m{n}", channel_id=channel) for n in range(10)]
    for message in messages:
        await discord_server.push_message(message)

    async def all_kept() -> bool:
        return len(await inbox_of(engine, ada)) == len(messages)

    await eventually(all_kept, "every message kept")
    assert await inbox_of(engine, ada) == [m["id"] for m in messages]
    responder.release.set()
    await discord_server.wait_for(lambda: len(discord_server.posts(channel)) == len(messages))
    assert [p["content"] for p in discord_server.posts(channel)] == [
        echo(f"m{n}", 2 * n) for n in range(len(messages))
    ]


async def test_a_reply_deferred_while_the_llm_is_down_comes_later_as_a_reply(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    """The writer is told once that the answer will come (the reply was being streamed,
    so the message is stored already); once the LLM is back, the sweep answers it."""
    llm = Failing(ResponderUnavailable("LLM API returned 503", status=503))
    bot = await start_bot(llm, stream_replies=True, **SHORT_LEASE)
    bea = user("bea")
    message = discord_server.message(bea, "later then")
    assert await answered(discord_server, message) == [DEFERRED_TEXT]
    llm.down = False

    taken: list[Taken] = []

    async def due() -> bool:  # its retry is due after INBOX_SWEEP_SECONDS
        found = await bot.service.inbox.take(["discord"], 100)
        taken.extend(t for t in found if t.message["platform_message_id"] == message["id"])
        return bool(taken)

    await eventually(due, "the deferred message taken")
    await bot.adapter.resume(bot.service.adopt(taken[0]))
    posts = discord_server.posts(message["channel_id"])
    assert len(posts) == 2 and posts[0]["content"] == DEFERRED_TEXT
    assert posts[1]["content"].startswith('You said: "later then"')
    assert posts[1]["message_reference"]["message_id"] == int(message["id"])
    assert [row[:2] for row in await user_rows(engine, bea)] == [
        ("user", "later then"),
        ("assistant", posts[1]["content"]),
    ]
