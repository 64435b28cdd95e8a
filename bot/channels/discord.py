"""Discord (discord.py): direct messages, and mentions in server channels and threads.

Translation only: a gateway MESSAGE_CREATE becomes an IncomingMessage, the Reply
goes back with POST /channels/{id}/messages in parts of at most 2000 characters.
Discord never delivers a message again, so each is kept in the inbox (bot/inbox.py)
before it is answered, in the gateway's order per channel; one taken from the inbox
after its worker died is answered from its plain data (`send_to`): in the channel or
thread it names (a DM's chat_id is its DM channel), as a reply to it.
Who may configure a server channel or thread, Discord says: the writer's member
object (GET /guilds/{guild_id}/members/{user_id}, fetched fresh) weighed against the
guild's roles and the channel's overwrites, which the gateway gave discord.py.

Two settings reroute the SDK, both for running behind a proxy:

- DISCORD_API_BASE_URL replaces `discord.http.Route.BASE`, a class attribute of
  discord.py, so it is process-wide: set while `run()` runs and restored after it.
  One process therefore talks to one Discord API (one adapter per process).
- DISCORD_GATEWAY_URL replaces the host and path of every main gateway websocket the
  client opens (the URL from GET /gateway/bot, the default gateway used when the shard
  count is configured, and the resume URL from READY), keeping discord.py's query
  (`v`, `encoding`, `compress`). It is done per client at `HTTPClient.ws_connect`,
  the one call all of them go through.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import discord
import yarl
from discord.http import INTERNAL_API_VERSION, Route

from bot.cache.streams import Orphan, StreamBooking
from bot.channels.base import ChannelAdapter
from bot.channels.delivery import deliver
from bot.channels.discord_live import MESSAGE_LIMIT, DiscordSurface
from bot.channels.dispatch import Dispatcher
from bot.channels.live import LiveReply, ended_text
from bot.channels.options import DiscordOptions
from bot.channels.pacing import Pacer, PacerBook
from bot.domain import (
    ChatKind,
    FeedbackEvent,
    IncomingMessage,
    PostRef,
    Reply,
    ReplyKind,
    rating_of,
)
from bot.errors import (
    CredentialsRejected,
    PlatformError,
    PlatformRateLimited,
    PlatformRejected,
    PlatformUnavailable,
    ShuttingDown,
    StoreError,
)
from bot.local import KeyedLocks
from bot.service import UNAVAILABLE_TEXT

if TYPE_CHECKING:  # discord.py's alias of what a message is in (typing only)
    from discord.abc import MessageableChannel as Channel

T = TypeVar("T")
# discord.py retries a 5xx for up to 25 s, and the admin check runs inside the turn's claim
# (LOCK_TTL_SECONDS, 30 by default): past this the writer is told it could not be checked.
ADMIN_CHECK_SECONDS = 5.0
_ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)
_NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
# What discord.py raises reading data of the wrong shape: it checks nothing itself.
_MALFORMED = (AttributeError, KeyError, IndexError, TypeError, ValueError, OverflowError)
_SNOWFLAKE = re.compile(r"0|[1-9][0-9]{0,19}")
CHANNEL = "discord"


def intents() -> discord.Intents:
    """Default intents plus message content (privileged: enable it in the developer portal)."""
    wanted = discord.Intents.default()
    wanted.message_content = True
    wanted.dm_messages = True
    wanted.guild_messages = True
    return wanted


def api_base(url: str) -> str:
    """`Route.BASE` for a configured API URL: the API version is appended unless given."""
    base = url.rstrip("/")
    return base if re.search(r"/v\d+$", base) else f"{base}/v{INTERNAL_API_VERSION}"


def gateway_via(gateway: yarl.URL, url: str) -> str:
    """A main gateway URL (it carries `encoding=`) rerouted to `gateway`, query kept."""
    asked = yarl.URL(url)
    if "encoding" not in asked.query:
        return url  # not the main gateway (a voice websocket): leave it alone
    return str(gateway.update_query(asked.query))


def strip_mention(text: str, user_id: int) -> str:
    return re.sub(rf"\s*<@!?{user_id}>\s*", " ", text).strip()


def incoming_message(message: discord.Message, me_id: int) -> IncomingMessage | None:
    """A person's message to the bot (user id `me_id`), or None for what it must ignore.

    discord.py copies payload fields without checking their types: a field that is not
    what Discord documents makes the message ignored, never an error.
    """
    author, text, channel = message.author, message.content, message.channel
    if author.bot or author.id == me_id or message.webhook_id is not None:
        return None
    if message.type not in _ANSWERED_TYPES or not isinstance(text, str):
        return None
    if not isinstance(channel, discord.DMChannel):
        if not _mentions(message, me_id):
            return None
        text = strip_mention(text, me_id)
    thread = channel if isinstance(channel, discord.Thread) else None
    return IncomingMessage(
        channel=CHANNEL,
        channel_user_id=str(author.id),
        text=text,
        username=author.name if isinstance(author.name, str) and author.name else None,
        platform_message_id=str(message.id),
        chat_id=str(thread.parent_id if thread else channel.id),
        thread_id=str(thread.id) if thread else None,
        chat_kind=_chat_kind(channel),
    )


def feedback_event(reaction: discord.RawReactionActionEvent, me_id: int) -> FeedbackEvent | None:
    """A person's 👍/👎 put on (REACTION_ADD) or taken off (REACTION_REMOVE) a message,
    or None for what is no rating: other emoji, the bot's own reactions, another bot's,
    a reaction added to a message Discord says is not the bot's. (A removal does not
    say whose the message is: the service finds out, only the bot's replies count.)"""
    emoji = reaction.emoji
    rating = rating_of(emoji.name) if emoji.is_unicode_emoji() else None
    member = reaction.member
    if rating is None or reaction.user_id == me_id or (member is not None and member.bot):
        return None
    post = PostRef(str(reaction.channel_id), str(reaction.message_id))
    user = str(reaction.user_id)
    if reaction.event_type == "REACTION_REMOVE":
        return FeedbackEvent(CHANNEL, user, None, post, withdrawn=rating)
    if reaction.message_author_id not in (None, me_id):
        return None
    return FeedbackEvent(CHANNEL, user, rating, post)


def reference_to(message: IncomingMessage, channel_id: int) -> discord.MessageReference | None:
    """The message, for a reply to show above itself; the reply goes all the same if
    the message was deleted since."""
    found = message.platform_message_id
    if found is None or not found.isdigit():
        return None
    return discord.MessageReference(
        message_id=int(found), channel_id=channel_id, fail_if_not_exists=False
    )


def _chat_kind(channel: object) -> ChatKind:
    """A DM, a thread channel (its own scope, apart from its parent), or a guild channel."""
    if isinstance(channel, discord.DMChannel):
        return ChatKind.PRIVATE
    return ChatKind.THREAD if isinstance(channel, discord.Thread) else ChatKind.GROUP


def _mentions(message: discord.Message, user_id: int) -> bool:
    """Addressed by name: <@id> in the text, or a reply that pings the bot."""
    return user_id in message.raw_mentions or any(u.id == user_id for u in message.mentions)


async def _delivered(
    request: Callable[[], Awaitable[T]], *, on_rate_limited: Callable[[], None]
) -> T:
    """One discord.py call under the delivery retry policy, its errors mapped to ours;
    `request` makes a fresh one."""

    async def attempt() -> T:
        return await _mapped(request())

    return await deliver(attempt, on_rate_limited=on_rate_limited)


async def _mapped(call: Awaitable[T]) -> T:
    """Await one discord.py call, with what escapes its own retries turned into ours."""
    try:
        return await call
    except discord.RateLimited as exc:  # longer than discord.py was willing to wait
        raise PlatformRateLimited(exc.retry_after, "(Discord)") from exc
    except discord.HTTPException as exc:
        raise platform_error(exc) from exc
    except _NETWORK_ERRORS as exc:
        raise PlatformUnavailable(f"Discord unreachable: {exc!r}") from exc


def platform_error(exc: discord.HTTPException) -> PlatformError:
    """What escapes discord.py's own retries, mapped to the delivery policy's errors."""
    if exc.status == 429:
        retry_after = exc.response.headers.get("Retry-After") if exc.response else None
        return PlatformRateLimited(float(retry_after or 1.0), "(Discord)")
    if exc.status >= 500:
        return PlatformUnavailable(f"Discord answered {exc.status}")
    return PlatformRejected(f"Discord refused the request: {exc.status} {exc.text}".strip())


def _rejected(exc: Exception) -> CredentialsRejected | None:
    """Discord's "no" for good at login or on the gateway: a bad token (401, close 4004)
    or a privileged intent the bot's settings lack (close 4014)."""
    token = "set DISCORD_BOT_TOKEN to the bot's token (Discord developer portal, Bot)"
    if isinstance(exc, discord.LoginFailure):
        return CredentialsRejected("Discord rejected DISCORD_BOT_TOKEN (401 at login)", token)
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return CredentialsRejected(
            "Discord refused the Message Content intent (gateway close 4014)",
            "enable Message Content Intent for the bot (Discord developer portal, Bot)",
        )
    if isinstance(exc, discord.ConnectionClosed) and exc.code == 4004:
        return CredentialsRejected("Discord rejected DISCORD_BOT_TOKEN (gateway close 4004)", token)
    return None


async def is_admin(client: discord.Client, message: IncomingMessage) -> bool:
    """Whether the writer may configure the message's channel: Manage Server or Manage
    Channels there (Administrator and the guild's owner have every permission). A thread's
    chat_id is its parent's, whose roles and overwrites decide; nobody administers a DM."""
    if message.chat_kind is ChatKind.PRIVATE:
        return False
    channel = _guild_channel(client, message.chat_id)
    member = await _fetch_member(channel.guild, int(message.channel_user_id))
    allowed = channel.permissions_for(member)  # roles, overwrites, owner, Administrator
    return bool(allowed.manage_guild or allowed.manage_channels)


def _guild_channel(client: discord.Client, chat_id: str | None) -> discord.abc.GuildChannel:
    """The server channel as the gateway described it (GUILD_CREATE and its updates)."""
    channel = client.get_channel(int(chat_id)) if chat_id else None
    if not isinstance(channel, discord.abc.GuildChannel):  # not (yet) known: cannot tell
        raise PlatformUnavailable(f"Discord channel {chat_id} is not known to this shard")
    return channel


async def _fetch_member(guild: discord.Guild, user_id: int) -> discord.Member:
    """The member as Discord has it now (roles change without an event this bot gets)."""
    try:
        return await _mapped(guild.fetch_member(user_id))
    except _MALFORMED as exc:
        raise PlatformUnavailable("Discord's member answer is unreadable") from exc


_MemberFetch = Callable[[int, int], Awaitable[Any]]


def _checked_member_fetch(fetch: _MemberFetch) -> _MemberFetch:
    """discord.py's GET /guilds/{guild_id}/members/{user_id}, the answer checked before
    discord.py reads it: it takes `roles` and `user` as given (roles as an object would
    become its keys, another user's member would be weighed as the writer), so a member
    not shaped as Discord documents it is PlatformUnavailable, never a yes."""

    async def get_member(guild_id: int, member_id: int) -> Any:
        data = await fetch(guild_id, member_id)
        if not _is_member(data, member_id):
            raise PlatformUnavailable("Discord's member answer is malformed")
        return data

    return get_member


def _is_member(data: object, member_id: int) -> bool:
    """A member object of `member_id`: its user's id and its role ids as snowflake strings."""
    if not isinstance(data, dict) or not isinstance(data.get("user"), dict):
        return False
    roles = data.get("roles")
    return (
        data["user"].get("id") == str(member_id)
        and isinstance(roles, list)
        and all(isinstance(r, str) and _SNOWFLAKE.fullmatch(r) for r in roles)
    )


class _Client(discord.AutoShardedClient):
    """The SDK client, handing its events to the adapter."""

    def __init__(self, adapter: DiscordAdapter, gateway: yarl.URL | None, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter
        if gateway is not None:
            connect = self.http.ws_connect

            async def ws_connect(url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
                return await connect(gateway_via(gateway, url), compress=compress)

            self.http.ws_connect = ws_connect  # type: ignore[method-assign]
        # Guild.fetch_member goes through this one call: its answer is checked there.
        checked = _checked_member_fetch(self.http.get_member)
        self.http.get_member = checked  # type: ignore[method-assign, assignment]

    async def setup_hook(self) -> None:
        self._adapter.on_login(self)

    async def on_ready(self) -> None:
        self._adapter.on_ready()

    async def on_message(self, message: discord.Message) -> None:
        await self._adapter.on_message(message)

    async def on_raw_reaction_add(self, reaction: discord.RawReactionActionEvent) -> None:
        await self._adapter.on_reaction(reaction)

    async def on_raw_reaction_remove(self, reaction: discord.RawReactionActionEvent) -> None:
        await self._adapter.on_reaction(reaction)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        self._adapter.on_error(event_method)


class DiscordAdapter(ChannelAdapter):
    name = CHANNEL
    resumes = True  # a message's channel and id are all a reply needs (send_to)

    def __init__(
        self,
        options: DiscordOptions,
        dispatcher: Dispatcher,
        *,
        guild_ready_timeout: float = 2.0,
        admin_check_timeout: float = ADMIN_CHECK_SECONDS,
    ) -> None:
        super().__init__(dispatcher)
        self.options = options
        self._token = options.token.get_secret_value()
        self._guild_ready_timeout = guild_ready_timeout
        self._admin_check_timeout = admin_check_timeout
        self._client: _Client | None = None
        self._ready = False
        self._stopping = False
        self._handling: set[asyncio.Task[Any]] = set()
        self._receiving = KeyedLocks()  # per channel
        self._rating = KeyedLocks()  # per user: their reactions recorded in Discord's order
        self._saved_api_base: str | None = None
        # Discord takes 50 requests a second from a bot (its global limit), all together,
        # and 5 message writes per 5 s per channel: budgets with margin (2 at once, then
        # 0.6 a second, stay inside any 5 s window).
        self._pacer = Pacer(per_second=40, burst=40)
        self._channel_pacers = PacerBook(per_second=0.6, burst=2)

    @property
    def connected(self) -> bool:
        client = self._client
        if not self._ready or client is None or client.is_closed() or not client.shards:
            return False
        return not any(shard.is_closed() for shard in client.shards.values())

    async def run(self) -> None:
        self._stopping = False
        self._ready = False
        client = self._client = self._build_client()
        self._set_api_base()
        try:
            await client.start(self._token, reconnect=True)  # login, then the gateway
        except Exception as exc:
            if self._stopping:
                pass
            elif (rejected := _rejected(exc)) is not None:
                raise rejected from None
            else:
                raise
        finally:
            self._ready = False
            if not client.is_closed():
                await client.close()
            self._restore_api_base()
        if not self._stopping:
            raise PlatformUnavailable("the Discord gateway connection ended")

    async def stop(self) -> None:
        """Take no new messages, let the ones being answered finish, then disconnect."""
        self._stopping = True
        if self._handling:
            await asyncio.wait(set(self._handling), timeout=self.options.shutdown_grace_seconds)
        client = self._client
        if client is not None and not client.is_closed():
            await client.close()
        self._ready = False
        self._restore_api_base()

    def on_login(self, client: discord.Client) -> None:
        """Logged in (discord.py's setup_hook, before the gateway): the service asks us who
        may configure a channel; we ask Discord, as this bot."""
        self.dispatcher.allow_admins(self.name, functools.partial(self._is_admin, client))

    async def _is_admin(self, client: discord.Client, message: IncomingMessage) -> bool:
        """is_admin, given up on after ADMIN_CHECK_SECONDS (discord.py retries 5xx longer)."""
        try:
            async with asyncio.timeout(self._admin_check_timeout):
                return await is_admin(client, message)
        except TimeoutError as exc:  # the deadline: is_admin maps the network's own
            seconds = self._admin_check_timeout
            raise PlatformUnavailable(f"no answer from Discord within {seconds:g} s") from exc

    def on_ready(self) -> None:
        client = self._client
        if client is not None and client.user is not None:
            self.log.info(
                "connected to Discord as %s (%s), %d server(s), shards %s",
                client.user.name,
                client.user.id,
                len(client.guilds),
                sorted(client.shards),
            )
        self._ready = True

    async def on_message(self, message: discord.Message) -> None:
        incoming = self.incoming(message)
        task = asyncio.current_task()  # discord.py runs each event handler as a task
        if incoming is None or task is None:
            return
        if self._stopping:
            self.dispatcher.refused(self.name)
            self._refused(incoming)
            return
        self._handling.add(task)
        try:
            if await self._kept(message.channel, incoming):
                await self._reply(message.channel, incoming)
        finally:
            self._handling.discard(task)

    async def on_reaction(self, reaction: discord.RawReactionActionEvent) -> None:
        """A reaction put on or taken off a message: a rating of a reply of the bot's,
        if it is 👍/👎. Discord never sends it again: one Postgres cannot take now is lost
        (logged by the dispatcher)."""
        me = self._client.user if self._client is not None else None
        event = None if me is None else feedback_event(reaction, me.id)
        if event is None or self._stopping:
            return
        # discord.py runs each event's handler as a task of its own: a user's 👍 then 👎
        # would race. Taken in the gateway's order (no await before), the lock keeps it.
        async with self._rating.hold(event.channel_user_id):
            with contextlib.suppress(StoreError):
                await self.dispatcher.rate(event)

    async def _kept(self, channel: Channel, incoming: IncomingMessage) -> bool:
        """Whether the message is in the inbox, for this worker to answer. Discord never
        delivers a message again: one that cannot be kept now is lost, so its writer is
        told to try again."""
        try:
            # The inbox orders a writer's messages as they are kept: in Discord's order,
            # which the gateway keeps in a channel, though each message is its own task.
            async with self._receiving.hold(str(channel.id)):
                receipt = await self.dispatcher.receive(incoming)
        except ShuttingDown:  # counted by the dispatcher
            self._refused(incoming)
            return False
        except StoreError as exc:
            self.log.warning(
                "discord message %s not kept (%s): its writer is told to try again",
                incoming.platform_message_id, exc,
                extra={"channel": self.name, "user_id": incoming.channel_user_id},
            )  # fmt: skip
            await self._tell(channel, incoming, Reply(UNAVAILABLE_TEXT, ReplyKind.UNAVAILABLE))
            return False
        return receipt.taken  # not taken: another worker has it in hand

    async def _reply(self, channel: Channel, incoming: IncomingMessage) -> None:
        """Answer the message, the reply shown as it is written."""
        async with self._live(channel, self.dispatcher.booking(self.name)) as live:
            reply = await self._answer(channel, incoming, live)
            if reply is None:
                return
            if (reply.text is None and not live.streamed) or await self._finish(
                live, incoming, reply
            ):
                self.dispatcher.delivered(incoming, reply, live.posts)

    async def _tell(self, channel: Channel, incoming: IncomingMessage, reply: Reply) -> None:
        """Send a reply the service did not make (it could not be asked)."""
        async with self._live(channel) as live:
            await self._finish(live, incoming, reply)

    async def send_to(
        self, message: IncomingMessage, text: str, reply_id: uuid.UUID | None = None
    ) -> bool:
        """Reply in the message's channel (its thread, its DM channel), as an answer to
        the message (shown above the reply, if it still exists). Discord refusing for good
        (the channel is gone, the bot may no longer write there) is logged: True."""
        client, place = self._client, message.thread_id or message.chat_id
        if client is None or not self.connected:
            return False
        if place is None or not place.isdigit():
            self.log.error("discord message %s names no channel to answer in",
                           message.platform_message_id)  # fmt: skip
            return True
        channel = client.get_partial_messageable(int(place))
        async with self._live(channel, reference=reference_to(message, channel.id)) as live:
            try:
                await live.finish(text)
            except PlatformRejected as exc:
                self.log.error("late reply refused by Discord for good: %s", exc,
                               extra=self._where(message))  # fmt: skip
                return True
            except PlatformError as exc:
                self.log.warning("late reply not delivered to Discord for now: %s", exc,
                                 extra=self._where(message))  # fmt: skip
                return False
        self.dispatcher.posted(self.name, reply_id, live.posts)
        return True

    def _where(self, message: IncomingMessage) -> dict[str, str | None]:
        return {"channel": self.name, "user_id": message.channel_user_id,
                "chat_id": message.chat_id}  # fmt: skip

    def _live(
        self,
        channel: Channel,
        booking: StreamBooking | None = None,
        reference: discord.MessageReference | None = None,
    ) -> LiveReply:
        """A reply in `channel`, within the bot's budget and the channel's."""
        pacers = (self._pacer, self._channel_pacers[str(channel.id)])
        surface = self._surface(channel, reference)
        return LiveReply(surface, self.options.stream_interval_seconds, booking, pacers)

    async def end_stream(self, orphan: Orphan, note: str) -> None:
        """Edit the message left growing to its text and the note."""
        client = self._client
        if client is None or client.is_closed():
            raise PlatformUnavailable("discord is not connected")
        channel = client.get_partial_messageable(int(orphan.where["channel_id"]))
        left = channel.get_partial_message(int(orphan.where["message_id"]))
        text = ended_text(orphan.text, note, MESSAGE_LIMIT)
        rate_limited = functools.partial(self.dispatcher.platform_rate_limited, self.name)
        await _delivered(functools.partial(left.edit, content=text), on_rate_limited=rate_limited)

    def on_error(self, event: str) -> None:
        """The last guard, called by discord.py inside the `except` of a failed handler."""
        self.dispatcher.failed(self.name)
        self.log.exception("discord %s handler failed", event)

    def _refused(self, incoming: IncomingMessage) -> None:
        # Discord has no redelivery: the message stays unanswered (counted in a metric).
        self.log.warning(
            "discord message %s refused: shutting down (Discord does not deliver it again)",
            incoming.platform_message_id,
            extra={"channel": self.name, "user_id": incoming.channel_user_id},
        )

    def incoming(self, message: discord.Message) -> IncomingMessage | None:
        """The message for the service, or None when the bot should not answer it."""
        me = self._client.user if self._client is not None else None
        return None if me is None else incoming_message(message, me.id)

    async def _answer(
        self, channel: discord.abc.Messageable, incoming: IncomingMessage, live: LiveReply
    ) -> Reply | None:
        async with contextlib.AsyncExitStack() as stack:
            with contextlib.suppress(discord.HTTPException, *_NETWORK_ERRORS):
                await stack.enter_async_context(channel.typing())  # cosmetic: never fatal

            async def show(piece: str) -> None:  # the reply as it is written
                await stack.aclose()  # "typing…" ends with the first words
                await live.add(piece)

            try:
                return await self.dispatcher.handle(incoming, show)
            except ShuttingDown:  # counted by the dispatcher; kept, it lapses to a sweep
                self.log.info("discord message %s left in the inbox: shutting down",
                              incoming.platform_message_id)  # fmt: skip
                return None

    def _surface(
        self,
        channel: discord.abc.Messageable,
        reference: discord.MessageReference | None = None,
    ) -> DiscordSurface:
        rate_limited = functools.partial(self.dispatcher.platform_rate_limited, self.name)
        send = functools.partial(_delivered, on_rate_limited=rate_limited)
        sent = functools.partial(self.dispatcher.sent, self.name)
        return DiscordSurface(channel, send, sent, reference)

    async def _finish(self, live: LiveReply, incoming: IncomingMessage, reply: Reply) -> bool:
        """The reply's final update (all of it, if nothing was streamed); False if it
        could not be delivered."""
        try:
            await live.finish(reply.text or "")
        except PlatformError as exc:
            self.log.error(
                "reply not delivered to Discord: %s",
                exc,
                extra={"channel": self.name, "user_id": incoming.channel_user_id,
                       "chat_id": incoming.chat_id, "conversation_id": reply.conversation_id},
            )  # fmt: skip
            return False
        if live.streamed:
            self.dispatcher.streamed(self.name, live.updates)
        return True

    def _build_client(self) -> _Client:
        sdk_options: dict[str, Any] = {
            "intents": intents(),
            "allowed_mentions": discord.AllowedMentions.none(),  # replies never ping anyone
            "max_messages": None,  # no message cache: the service keeps the history
            "chunk_guilds_at_startup": False,
            "guild_ready_timeout": self._guild_ready_timeout,
        }
        if self.options.shard_count is not None:
            sdk_options["shard_count"] = self.options.shard_count
        if self.options.shard_ids:
            sdk_options["shard_ids"] = list(self.options.shard_ids)
        url = self.options.gateway_url
        # The bot never joins voice: no warning that its libraries (PyNaCl, davey) are missing.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        return _Client(self, yarl.URL(url) if url else None, **sdk_options)

    def _set_api_base(self) -> None:
        url = self.options.api_base_url
        if url and self._saved_api_base is None:
            self._saved_api_base = Route.BASE
            Route.BASE = api_base(url)

    def _restore_api_base(self) -> None:
        if self._saved_api_base is not None:
            Route.BASE = self._saved_api_base
            self._saved_api_base = None
