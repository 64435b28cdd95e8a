"""The Discord adapter end to end: real discord.py against a local Discord, real stores.

The fake (bot/emulators/discord_api.py) serves the REST API and the gateway on
127.0.0.1; tests push MESSAGE_CREATE dispatches and assert on the requests the SDK
sends and on the rows in Postgres. Every request and payload is checked against the
vendored Discord OpenAPI subset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord
import pytest
from discord.http import Route
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.streams import StreamLedger
from bot.channels.discord import DiscordAdapter, api_base, gateway_via, strip_mention
from bot.channels.registry import discord_options
from bot.domain import IncomingMessage, TextSink
from bot.emulators.discord_api import TOKEN, FakeDiscord, Json, SpecChecker, user
from bot.errors import CredentialsRejected
from bot.metrics import Metrics
from bot.responders import EchoResponder, Responder, ResponderRequest, ResponderResult
from bot.service import ConversationService
from tests.support import (
    RecordingDispatcher,
    ServiceFactory,
    SlowResponder,
    echo,
    messages_of,
    usernames,
)

DEFAULT_API_BASE = Route.BASE
INTENTS = {"guilds": 1 << 0, "guild_messages": 1 << 9, "direct_messages": 1 << 12,
           "message_content": 1 << 15}  # fmt: skip

pytestmark = pytest.mark.timeout(30)


class LongResponder(EchoResponder):
    """Always answers with 4500 characters."""

    text = ("word " * 900).strip()

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        return ResponderResult(text=self.text, model_used="long")


@dataclass
class Bot:
    adapter: DiscordAdapter
    run: asyncio.Task[None]
    service: ConversationService
    dispatcher: RecordingDispatcher
    metrics: Metrics
    expect_clean_run: bool = True  # run() returns normally once stop() was called

    def sent(self) -> float:
        return self.sample("bot_messages_out_total")

    def sample(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"channel": "discord"})
        return value or 0.0


StartBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def start_bot(
    make_service: ServiceFactory, discord_server: FakeDiscord, redis: object
) -> AsyncIterator[StartBot]:
    """Start the adapter like the worker does; stop it and check the traffic at the end."""
    bots: list[Bot] = []

    async def start(
        responder: Responder | None = None,
        *,
        wait: bool = True,
        streams: StreamLedger | None = None,
        **overrides: Any,
    ) -> Bot:
        overrides.setdefault("discord_bot_token", TOKEN)
        overrides.setdefault("discord_api_base_url", discord_server.api_url)
        service = await make_service(responder=responder, **overrides)
        metrics = Metrics()
        dispatcher = RecordingDispatcher(service, metrics, streams)
        adapter = DiscordAdapter(
            discord_options(service.settings), dispatcher, guild_ready_timeout=0.2
        )
        run = asyncio.create_task(adapter.run())
        bot = Bot(adapter, run, service, dispatcher, metrics, expect_clean_run=wait)
        bots.append(bot)
        if wait:
            await discord_server.wait_for(lambda: adapter.connected or bot.run.done(), 12)
            assert adapter.connected, bot.run.result()
        return bot

    yield start
    for bot in bots:
        await bot.adapter.stop()
        await asyncio.wait({bot.run}, timeout=10)
        assert bot.run.done()
        if bot.expect_clean_run:
            assert bot.run.exception() is None
    assert Route.BASE == DEFAULT_API_BASE  # the process-wide override is undone
    assert discord_server.violations == []


async def answered(server: FakeDiscord, message: Json, parts: int = 1) -> list[str]:
    """Push a message and wait until its reply (in `parts` posts) arrived; the contents."""
    await server.push_message(message)
    channel = message["channel_id"]
    await server.wait_for(lambda: len(server.posts(channel)) >= parts)
    return [post["content"] for post in server.posts(channel)]


async def user_rows(engine: AsyncEngine, discord_user: Json) -> list[tuple[str, str, Any]]:
    rows = await messages_of(engine, discord_user["id"])
    return [(row.role, row.content, row.platform_message_id) for row in rows]


async def test_connects_with_the_intents_and_settings_it_needs(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    bot = await start_bot()
    assert [c.path for c in discord_server.calls[:3]] == [
        "/users/@me", "/oauth2/applications/@me", "/gateway/bot"
    ]  # fmt: skip
    (connection,) = discord_server.connections
    assert connection.path == "/gateway"  # the URL GET /gateway/bot gave
    assert connection.query["v"] == "10" and connection.query["encoding"] == "json"
    assert connection.query["compress"] == "zlib-stream" and connection.zlib is not None
    (identify,) = discord_server.received(2)
    assert identify["d"]["token"] == TOKEN
    assert identify["d"]["shard"] == [0, 1]
    for name, bit in INTENTS.items():
        assert identify["d"]["intents"] & bit, f"intent {name} missing"
    assert discord_server.received(1), "no heartbeat"
    assert bot.adapter.connected


async def test_direct_message_is_answered_and_stored(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    bot = await start_bot()
    alice = user("alice")
    message = discord_server.message(alice, "hello there")
    assert await answered(discord_server, message) == [echo("hello there")]

    channel = message["channel_id"]
    (post,) = discord_server.posts(channel)
    assert post["allowed_mentions"] == {"parse": []}  # a reply never pings anyone
    paths = [c.path for c in discord_server.calls]
    typing = paths.index(f"/channels/{channel}/typing")
    assert typing < paths.index(f"/channels/{channel}/messages")  # typing while it works
    assert await user_rows(engine, alice) == [
        ("user", "hello there", message["id"]),
        ("assistant", echo("hello there"), None),
    ]
    assert await usernames(engine, "discord", alice["id"]) == ["alice"]
    await discord_server.wait_for(lambda: bot.sent() == 1)  # counted once the response is read
    assert bot.dispatcher.seen == [
        IncomingMessage(
            channel="discord",
            channel_user_id=alice["id"],
            text="hello there",
            username="alice",
            platform_message_id=message["id"],
            chat_id=channel,
            thread_id=None,
        )
    ]


@pytest.mark.parametrize("form", ["<@{id}>", "<@!{id}>"])
async def test_mention_in_a_server_channel_is_answered_without_the_mention(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine, form: str
) -> None:
    await start_bot()
    bob, mention = user("bob"), form.format(id=discord_server.bot["id"])
    message = discord_server.message(
        bob, f"{mention} what's up?", guild=True, mentions=(discord_server.bot,)
    )
    assert await answered(discord_server, message) == [echo("what's up?")]
    assert (await user_rows(engine, bob))[0] == ("user", "what's up?", message["id"])


async def test_mention_in_a_thread_is_answered_in_the_thread(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    bot = await start_bot()
    me = discord_server.bot
    message = discord_server.message(
        user("carol"), f"hi <@{me['id']}>", guild=True, channel_id=discord_server.thread_id,
        mentions=(me,),
    )  # fmt: skip
    assert await answered(discord_server, message) == [echo("hi")]
    assert discord_server.posts(discord_server.channel_id) == []
    (incoming,) = bot.dispatcher.seen
    assert (incoming.chat_id, incoming.thread_id) == (
        discord_server.channel_id, discord_server.thread_id
    )  # fmt: skip


async def test_reply_to_the_bot_counts_as_a_mention(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    await start_bot()
    earlier = discord_server.message(discord_server.bot, "an earlier answer", guild=True)
    message = discord_server.message(
        user("oscar"), "and then?", guild=True, mentions=(discord_server.bot,), reply_to=earlier
    )
    assert await answered(discord_server, message) == [echo("and then?")]


@pytest.mark.parametrize("kind", ["not mentioned", "another bot", "itself"])
async def test_messages_not_for_the_bot_are_ignored(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine, kind: str
) -> None:
    bot = await start_bot()
    me = discord_server.bot
    ignored = {
        "not mentioned": discord_server.message(user("dave"), "just chatting", guild=True),
        "another bot": discord_server.message(user("otherbot", bot=True), "beep"),
        "itself": discord_server.message(me, f"<@{me['id']}> talking to myself", guild=True,
                                         mentions=(me,)),
    }[kind]  # fmt: skip
    await discord_server.push_message(ignored)
    probe = discord_server.message(user("erin"), "probe")  # handled after the ignored one
    await answered(discord_server, probe)

    assert discord_server.posts(ignored["channel_id"]) == []
    assert not discord_server.calls_to("POST", f"/channels/{ignored['channel_id']}/typing")
    assert await user_rows(engine, ignored["author"]) == []
    await discord_server.wait_for(lambda: bot.sent() == 1)  # counted once the response is read


async def test_long_reply_is_split_into_messages_of_at_most_2000_characters(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    bot = await start_bot(LongResponder())
    frank = user("frank")
    parts = await answered(discord_server, discord_server.message(frank, "tell me a lot"), 3)
    assert len(parts) == 3
    assert all(len(part) <= 2000 for part in parts)
    assert " ".join(parts) == LongResponder.text
    assert [row[:2] for row in await user_rows(engine, frank)] == [
        ("user", "tell me a lot"),
        ("assistant", LongResponder.text),  # stored whole, sent in parts
    ]
    await discord_server.wait_for(lambda: bot.sent() == 3)  # counted once the response is read


async def test_redelivered_message_is_answered_once(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine
) -> None:
    bot = await start_bot()
    grace = user("grace")
    message = discord_server.message(grace, "only once please")
    await answered(discord_server, message)

    seq = await discord_server.push_message(message)  # the same event again
    await discord_server.reconnect(replay_from=seq)  # and that once more, replayed on RESUME
    await discord_server.wait_for(lambda: bot.service.stats["duplicate"] == 2)

    (resume,) = discord_server.received(6)
    assert resume["d"]["session_id"] == discord_server.session().session_id
    assert discord_server.connections[-1].path == "/resume-gateway"  # READY's resume URL
    assert discord_server.posts(message["channel_id"]) == [
        discord_server.posts(message["channel_id"])[0]
    ]
    assert [row[0] for row in await user_rows(engine, grace)] == ["user", "assistant"]
    await discord_server.wait_for(lambda: bot.adapter.connected)  # resumed by itself


@pytest.mark.parametrize("handled_by", ["discord.py", "the adapter"])
async def test_rate_limited_reply_is_delivered_once_after_the_wait(
    start_bot: StartBot,
    discord_server: FakeDiscord,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    handled_by: str,
) -> None:
    """discord.py waits out a 429 from Discord itself; a 429 it gives up on (no Via
    header: it suspects Cloudflare) is retried by the delivery policy after Retry-After."""
    bot = await start_bot()
    discord_server.rate_limited_posts = 1
    discord_server.rate_limit_via = handled_by == "discord.py"
    heidi = user("heidi")
    message = discord_server.message(heidi, "are you there?")
    assert await answered(discord_server, message) == [echo("are you there?")]

    attempts = discord_server.calls_to("POST", f"/channels/{message['channel_id']}/messages")
    assert [call.status for call in attempts] == [429, 200]
    retried_by_us = "rate limited, retry after 1 s (Discord)" in caplog.text
    assert retried_by_us == (handled_by == "the adapter")
    assert bot.sample("bot_platform_rate_limited_total") == (1 if retried_by_us else 0)
    assert [row[0] for row in await user_rows(engine, heidi)] == ["user", "assistant"]
    await discord_server.wait_for(lambda: bot.sent() == 1)  # counted once the response is read


async def test_refused_reply_is_not_retried(
    start_bot: StartBot,
    discord_server: FakeDiscord,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """403 Missing Permissions (the bot may read but not write there): logged, not retried;
    the typing indicator failing the same way does not stop the answer."""
    bot = await start_bot()
    ivan = user("ivan")
    message = discord_server.message(ivan, "hello?")
    discord_server.forbidden_channels.add(message["channel_id"])
    await discord_server.push_message(message)
    await discord_server.wait_for(lambda: "reply not delivered" in caplog.text)
    posts = discord_server.calls_to("POST", f"/channels/{message['channel_id']}/messages")
    assert [call.status for call in posts] == [403]
    assert bot.sent() == 0
    assert [row[0] for row in await user_rows(engine, ivan)] == ["user", "assistant"]


async def test_stop_finishes_the_message_in_flight_and_takes_no_new_ones(
    start_bot: StartBot,
    discord_server: FakeDiscord,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    responder = SlowResponder(delay=1.0)
    bot = await start_bot(responder)
    judy, late = user("judy"), user("late")
    message = discord_server.message(judy, "slow one")
    await discord_server.push_message(message)
    await asyncio.wait_for(responder.started.wait(), 5)

    stopping = asyncio.create_task(bot.adapter.stop())
    await asyncio.sleep(0.1)
    too_late = discord_server.message(late, "too late")
    await discord_server.push_message(too_late)
    await asyncio.wait_for(stopping, 10)

    assert [post["content"] for post in discord_server.posts(message["channel_id"])] == [
        echo("slow one")
    ]
    assert [row[0] for row in await user_rows(engine, judy)] == ["user", "assistant"]
    assert [m.text for m in bot.dispatcher.seen] == ["slow one"]  # "too late" not taken
    assert await user_rows(engine, late) == []
    assert bot.sample("bot_refused_at_shutdown_total") == 1
    assert refusal_logged(caplog, too_late)
    await asyncio.wait_for(bot.run, 5)  # run() returns normally after stop()
    assert not bot.adapter.connected
    assert Route.BASE == DEFAULT_API_BASE


async def test_the_adapter_runs_again_after_a_stop(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    """What the worker does after a crash: stop() the adapter, then run() it again."""
    bot = await start_bot()
    await bot.adapter.stop()
    await asyncio.wait_for(bot.run, 10)
    bot.run = asyncio.create_task(bot.adapter.run())  # the fixture stops this one
    await discord_server.wait_for(lambda: bot.adapter.connected or bot.run.done(), 12)
    message = discord_server.message(user("nora"), "back again")
    assert await answered(discord_server, message) == [echo("back again")]


def refusal_logged(caplog: pytest.LogCaptureFixture, message: Json) -> bool:
    """A WARNING names the channel and the message that Discord will not deliver again."""
    return any(
        r.levelname == "WARNING" and "discord" in r.getMessage() and message["id"] in r.getMessage()
        for r in caplog.records
    )


async def test_message_arriving_during_the_drain_is_refused_loudly(
    start_bot: StartBot,
    discord_server: FakeDiscord,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker closes the dispatcher, then drains, then stops the adapters: a message
    in between is refused, and as Discord never redelivers it, that is a counted warning."""
    responder = SlowResponder(delay=1.0)
    bot = await start_bot(responder)
    kim, lou = user("kim"), user("lou")
    first = discord_server.message(kim, "in flight")
    await discord_server.push_message(first)
    await asyncio.wait_for(responder.started.wait(), 5)

    bot.dispatcher.close()  # what the worker does first on SIGTERM
    during = discord_server.message(lou, "during the drain")
    await discord_server.push_message(during)
    await discord_server.wait_for(lambda: bot.sample("bot_refused_at_shutdown_total") == 1)
    assert await bot.dispatcher.drain(5)

    await discord_server.wait_for(lambda: len(discord_server.posts(first["channel_id"])) == 1)
    assert discord_server.posts(during["channel_id"]) == []
    assert await user_rows(engine, lou) == []
    assert refusal_logged(caplog, during)


@pytest.mark.parametrize(("status", "handled_by"), [(500, "discord.py"), (503, "the adapter")])
async def test_server_error_then_success_delivers_one_reply(
    start_bot: StartBot, discord_server: FakeDiscord, engine: AsyncEngine, status: int,
    handled_by: str,
) -> None:  # fmt: skip
    """discord.py retries a 500 itself; a 503 reaches the delivery policy, which retries it."""
    bot = await start_bot()
    discord_server.failing_posts, discord_server.failing_status = 1, status
    nina = user("nina")
    message = discord_server.message(nina, "still there?")
    assert await answered(discord_server, message) == [echo("still there?")]

    posts = discord_server.calls_to("POST", f"/channels/{message['channel_id']}/messages")
    assert [call.status for call in posts] == [status, 200]
    assert [row[0] for row in await user_rows(engine, nina)] == ["user", "assistant"]
    await discord_server.wait_for(lambda: bot.sent() == 1)  # counted once the response is read


class BrokenResponder(EchoResponder):
    """A responder with a bug: an error the service has no answer for."""

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        raise RuntimeError("responder bug")


async def test_unexpected_error_is_logged_with_its_traceback_and_counted(
    start_bot: StartBot, discord_server: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await start_bot(BrokenResponder())
    message = discord_server.message(user("olga"), "boom")
    await discord_server.push_message(message)
    await discord_server.wait_for(lambda: bot.sample("bot_adapter_errors_total") == 1)
    (record,) = [r for r in caplog.records if "on_message handler failed" in r.getMessage()]
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert discord_server.posts(message["channel_id"]) == []
    assert bot.adapter.connected  # one broken message does not take the channel down


async def test_configured_shards_connect_through_the_gateway_url(
    start_bot: StartBot, discord_server: FakeDiscord
) -> None:
    gateway = discord_server.ws_url("/proxied-gateway") + "?proxy=1"
    await start_bot(discord_shard_count=2, discord_shard_ids=[0, 1], discord_gateway_url=gateway)
    assert not discord_server.calls_to("GET", "/gateway/bot")  # the shard count is given
    assert sorted(p["d"]["shard"] for p in discord_server.received(2)) == [[0, 2], [1, 2]]
    for connection in discord_server.connections:
        assert connection.path == "/proxied-gateway"
        assert connection.query["proxy"] == "1" and connection.query["encoding"] == "json"
    message = discord_server.message(user("mallory"), "sharded hello")
    assert await answered(discord_server, message) == [echo("sharded hello")]


@pytest.mark.parametrize(
    ("problem", "says", "fix"),
    [
        ("bad token", "rejected DISCORD_BOT_TOKEN (401 at login)", "set DISCORD_BOT_TOKEN"),
        ("intent", "Message Content intent (gateway close 4014)", "enable Message Content"),
    ],
)
async def test_run_says_discord_refuses_the_bot_for_good(
    start_bot: StartBot, discord_server: FakeDiscord, problem: str, says: str, fix: str
) -> None:
    """The worker does not restart a channel whose credentials are refused: it says
    which setting to fix (tests/test_worker.py)."""
    discord_server.message_content_allowed = problem != "intent"
    token = "not-the-token" if problem == "bad token" else TOKEN
    bot = await start_bot(wait=False, discord_bot_token=token)
    with pytest.raises(CredentialsRejected) as refused:
        await asyncio.wait_for(bot.run, 10)
    assert says in str(refused.value) and refused.value.fix.startswith(fix)
    assert not bot.adapter.connected
    assert Route.BASE == DEFAULT_API_BASE


def test_settings_that_cannot_work_are_refused(make_settings: Callable[..., Any]) -> None:
    from bot.errors import ConfigError

    dispatcher: Any = None
    for bad in (
        {},
        {"discord_bot_token": TOKEN, "discord_shard_ids": [0]},
        {"discord_bot_token": TOKEN, "discord_shard_count": 2, "discord_shard_ids": [2]},
    ):
        with pytest.raises(ConfigError):
            DiscordAdapter(discord_options(make_settings(**bad)), dispatcher)


@pytest.mark.parametrize(
    ("configured", "base"),
    [
        ("http://proxy:8080/api", "http://proxy:8080/api/v10"),
        ("http://proxy:8080/api/", "http://proxy:8080/api/v10"),
        ("https://proxy/api/v9", "https://proxy/api/v9"),
    ],
)
def test_api_base(configured: str, base: str) -> None:
    assert api_base(configured) == base


def test_gateway_url_keeps_the_query_discord_py_builds() -> None:
    import yarl

    proxy = yarl.URL("ws://gw-proxy:7878/ws?region=eu")
    asked = "wss://gateway-us-east1-b.discord.gg/?v=10&encoding=json&compress=zlib-stream"
    rerouted = yarl.URL(gateway_via(proxy, asked))
    assert (rerouted.host, rerouted.port, rerouted.path) == ("gw-proxy", 7878, "/ws")
    assert dict(rerouted.query) == {
        "region": "eu", "v": "10", "encoding": "json", "compress": "zlib-stream"
    }  # fmt: skip
    voice = "wss://eu-west1.discord.media/?v=8"
    assert gateway_via(proxy, voice) == voice


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ("<@42> hello", "hello"),
        ("hello <@!42>", "hello"),
        ("hey <@42> how are you", "hey how are you"),
        ("<@42>\nline two", "line two"),
        ("<@43> not me", "<@43> not me"),
    ],
)
def test_strip_mention(text: str, stripped: str) -> None:
    assert strip_mention(text, 42) == stripped


def test_the_spec_check_catches_a_wrong_shape() -> None:
    """The fake's checks have teeth: the payloads it accepts are really spec-shaped."""
    spec, server = SpecChecker(), FakeDiscord()
    good = server.message(user("peggy"), "hi", guild=True)
    assert spec.errors(good, spec.schema("MessageResponse")) == []
    wrong = {**good, "id": 42, "type": 99}
    del wrong["content"]
    problems = spec.errors(wrong, spec.schema("MessageResponse"))
    assert any("missing 'content'" in p for p in problems)
    assert any(p.startswith("$.id:") for p in problems)
    assert any(p.startswith("$.type:") for p in problems)
    operation = spec.operation("POST", "/channels/1/messages")
    assert operation is not None
    create = spec.body_schema(operation["requestBody"])
    assert create is not None
    assert spec.errors({"content": "x" * 4001}, create)  # Discord's limit (4000)


async def test_no_voice_warning_at_start(
    start_bot: StartBot, caplog: pytest.LogCaptureFixture
) -> None:
    """discord.py warns once per process that PyNaCl is missing for voice, which the bot
    never uses: not at a worker's start."""
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = True  # a fresh process
    with caplog.at_level(logging.WARNING):
        await start_bot()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
