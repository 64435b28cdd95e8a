"""The Telegram channel (python-telegram-bot): updates in, replies out.

Updates arrive by long polling (default) or, with TELEGRAM_WEBHOOK_URL set, by webhook.
Both receivers are ours, on top of PTB's Bot, because PTB's own ones confirm an update
before anything is done with it. Ours confirm an update only once it is kept in the
inbox (bot/inbox.py), which answers it even if this worker dies: the getUpdates offset
passes it then, or the webhook answers 200. An update that cannot be kept (Postgres is
down, or the worker is shutting down) stays unconfirmed (polling) or is answered 503
(webhook), so that Telegram sends it again.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import sys
import uuid
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from telegram import ChatMember, Message, ReplyParameters, Update
from telegram import error as tg
from telegram.constants import ChatAction, MessageLimit, UpdateType
from telegram.error import InvalidToken, RetryAfter, TelegramError
from telegram.ext import Application, ExtBot
from telegram.warnings import PTBDeprecationWarning

from bot.cache.streams import Orphan
from bot.channels.base import (
    ChannelAdapter,
    check_declared_size,
    check_media_type,
    parse_json,
    read_body,
    refusal,
    split_text,
    webhook_application,
)
from bot.channels.delivery import deliver
from bot.channels.dispatch import Dispatcher
from bot.channels.live import LiveReply, ended_text
from bot.channels.options import TelegramOptions
from bot.channels.pacing import Pacer, PacerBook
from bot.channels.telegram_live import post_of, surface_for
from bot.channels.telegram_updates import (
    MALFORMED,
    feedback_event,
    incoming_message,
    parse_update,
)
from bot.domain import NOT_KEPT, ChatKind, IncomingMessage, PostRef
from bot.errors import (
    CredentialsRejected,
    PlatformError,
    PlatformRateLimited,
    PlatformRejected,
    PlatformUnavailable,
    ShuttingDown,
    StoreError,
    StoreUnavailable,
    WebhookRefused,
)
from bot.listening import start_site

T = TypeVar("T")
Bot = ExtBot[None]

# Messages, and reactions (👍/👎 rate the bot's replies); edits, channel posts: never
# fetched. Telegram sends reactions only when asked for them by name here.
ALLOWED_UPDATES = [UpdateType.MESSAGE, UpdateType.MESSAGE_REACTION]
POLL_TIMEOUT = 30  # seconds a getUpdates long poll may wait on Telegram's side
MAX_IN_FLIGHT = 90  # updates answered at once; polling takes no more until one is done
# (those it leaves stay unconfirmed, and come with a later poll)
REPOLL_DELAY = 0.5  # after a poll that brought back only updates taken already
UNKEPT_DELAY = 1.0  # after an update Postgres could not keep, before it is fetched again
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
JSON_ONLY = frozenset({"application/json"})  # what Telegram posts
TYPING_DELAY = 1.0  # a fast reply needs no "typing…"
TYPING_EVERY = 4.5  # Telegram clears the status after 5 s
# The statuses getChatMember gives those who may configure a chat: "creator", "administrator".
ADMIN_STATUSES = (ChatMember.OWNER, ChatMember.ADMINISTRATOR)


class TelegramAdapter(ChannelAdapter):
    name = "telegram"
    resumes = True

    def __init__(self, options: TelegramOptions, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher)
        self.options = options
        self._token = options.token.get_secret_value()
        secret = options.webhook_secret
        self._secret = secret.get_secret_value() if secret is not None else None
        self._connected = False
        self._stopping = asyncio.Event()
        self._closed = asyncio.Event()
        self._closed.set()
        self._receiver: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # The getUpdates offset: one past the newest update kept in the inbox (or ignored).
        self._next: int | None = None
        self._refusing = False  # the dispatcher refused an update: it is shutting down
        self._username = ""
        self._bot_id = 0
        self._bot: ExtBot[Any] | None = None  # once initialized: ends streams left growing
        # Telegram takes about 30 messages a second from a bot, all chats together, and
        # about one a second per chat (briefly more): budgets with margin.
        self._pacer = Pacer(per_second=25, burst=25)
        self._chat_pacers = PacerBook(per_second=0.8, burst=2)

    @property
    def connected(self) -> bool:
        return self._connected

    async def run(self) -> None:
        # The worker runs the same adapter again after a crash (and a stop()): start afresh.
        self._stopping.clear()
        self._closed.clear()
        self._next, self._refusing = None, False
        app = self._build()
        try:
            await _call(app.initialize())  # getMe: a bad token or no network raises here
            if self._stopping.is_set():
                return
            self._username, self._bot_id = app.bot.username, app.bot.id
            self._bot = app.bot
            # The service asks us who may configure a group; we ask Telegram, as this bot.
            self.dispatcher.allow_admins(self.name, partial(_is_admin, app.bot))
            receive = self._serve_webhook if self.options.webhook_url else self._poll
            self._receiver = asyncio.create_task(receive(app.bot))
            await asyncio.wait([self._receiver])
            if not self._receiver.cancelled() and (error := self._receiver.exception()):
                raise error
        finally:
            await self._close(app)
            self._closed.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.cancel()
        await self._closed.wait()

    def _build(self) -> Application[Any, Any, Any, Any, Any, Any]:
        base_url = self.options.api_base_url
        return (
            Application.builder()
            .token(self._token)
            .base_url(base_url)
            .base_file_url(_file_url(base_url))
            .updater(None)
            .job_queue(None)
            .build()
        )

    async def _close(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        self._connected = False
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.wait([self._receiver])
            self._receiver = None
        await self._finish_handlers()
        if self._next is not None:  # polling took updates: confirm them
            await self._confirm(app.bot)
        self._bot = None
        await app.shutdown()
        await app.bot.shutdown()  # after a failed getMe the app never counted as initialized

    async def _finish_handlers(self) -> bool:
        """Let the updates in hand be answered (bounded); False if some had to be cut off."""
        if not self._handlers:
            return True
        grace = self.options.shutdown_grace_seconds
        _, pending = await asyncio.wait(self._handlers, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            self.log.warning("%d telegram updates cut off at shutdown", len(pending))
            await asyncio.wait(pending)
        return not pending

    async def _confirm(self, bot: Bot) -> None:
        # Spares the next start from fetching (and de-duplicating) what was kept. Updates
        # cut off at shutdown are kept too: a sweep answers them once their lease lapses.
        try:
            await bot.get_updates(offset=self._next, limit=1, timeout=0)
        except TelegramError as exc:
            self.log.info("could not confirm the last updates (%s); they come again", exc.message)

    # -- receiving -------------------------------------------------------------------------

    async def _poll(self, bot: Bot) -> None:
        await _retried(bot.delete_webhook)  # getUpdates fails while a webhook is set
        self._connected = True
        while not self._refusing:
            if len(self._handlers) >= MAX_IN_FLIGHT:
                await self._confirm(bot)  # what is kept, before waiting for room
            while len(self._handlers) >= MAX_IN_FLIGHT:
                await self._any_answered(POLL_TIMEOUT)
            # Outages are retried for as long as they last: the adapter reconnects by itself.
            fetch = partial(self._fetch, bot)
            updates = await _retried(
                fetch, sys.maxsize, math.inf, on_rate_limited=self._count_rate_limited
            )
            fresh = [u for u in updates if self._next is None or u.update_id >= self._next]
            if not await self._take_in_order(fresh):
                if not self._refusing:
                    await asyncio.sleep(UNKEPT_DELAY)  # Postgres is down: not at once again
            elif updates and not fresh:
                # Only updates taken already came back (a re-sent one): not at once again.
                await asyncio.sleep(REPOLL_DELAY)
        self.log.info("dispatcher closing: telegram updates from %s left unconfirmed", self._next)
        await self._stopping.wait()

    async def _take_in_order(self, updates: list[Update]) -> bool:
        """Take the updates one after the other, in Telegram's order (the inbox keeps the
        order it is given), moving the offset past each one kept. False if one could
        not be kept: it and those after it stay unconfirmed, and come again."""
        for update in updates:
            if len(self._handlers) >= MAX_IN_FLIGHT:
                return True  # the rest come with the next poll, once there is room
            if not await self._take(update):
                return False
            self._next = update.update_id + 1
        return True

    async def _any_answered(self, wait_at_most: float) -> None:
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=wait_at_most, return_when="FIRST_COMPLETED")
        else:
            await asyncio.sleep(wait_at_most)

    async def _fetch(self, bot: Bot) -> tuple[Update, ...]:
        try:
            updates = await bot.get_updates(
                offset=self._next, timeout=POLL_TIMEOUT, allowed_updates=ALLOWED_UPDATES
            )
        except TelegramError:
            self._connected = False
            raise
        self._connected = True
        return updates

    async def _serve_webhook(self, bot: Bot) -> None:
        options = self.options
        url = options.webhook_url
        assert url is not None and self._secret is not None  # checked building the options
        server = webhook_application(options.webhook_max_body_bytes)
        server.router.add_post(urlsplit(url).path or "/", partial(self._on_webhook, bot))
        runner = web.AppRunner(server, access_log=None, shutdown_timeout=5)
        await runner.setup()
        try:
            host, port = options.webhook_listen, options.webhook_port
            await start_site(runner, host, port, "TELEGRAM_WEBHOOK_PORT")
            hook = partial(bot.set_webhook, url, secret_token=self._secret)
            await _retried(partial(hook, allowed_updates=ALLOWED_UPDATES))
            self._connected = True
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    async def _on_webhook(self, bot: Bot, request: web.Request) -> web.Response:
        try:
            update = await self._webhook_update(bot, request)
        except WebhookRefused as exc:
            return refusal(exc)
        if not await self._take(update):
            return _respond(503, "not kept")  # Telegram delivers it again later
        return _respond(200, "")

    async def _webhook_update(self, bot: Bot, request: web.Request) -> Update:
        """The update a webhook request carries: size, secret, type and shape checked."""
        limit = self.options.webhook_max_body_bytes
        check_declared_size(request, limit)
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, (self._secret or "").encode()):
            raise WebhookRefused(403, "wrong or missing secret token")
        check_media_type(request, JSON_ONLY)
        update = parse_update(parse_json(await read_body(request, limit)), bot)
        if update is None:
            raise WebhookRefused(400, "not a Telegram update")
        return update

    async def _take(self, update: Update) -> bool:
        """Keep an update the bot answers in the inbox, then start answering it; True
        once Telegram may be told it arrived (kept, held by another worker already, or
        nothing to answer), False if it must not be (it was not kept)."""
        if update.message_reaction is not None:
            return await self._rate(update)
        incoming = incoming_message(update, self._bot_id, self._username)
        if update.message is None or incoming is None:
            return True  # nothing to answer: nothing to keep
        try:
            receipt = await self.dispatcher.receive(incoming)
        except ShuttingDown:
            self._refusing = True
            return False
        except StoreUnavailable as exc:
            self.log.warning("telegram update %s not kept, left to come again: %s",
                             update.update_id, exc)  # fmt: skip
            return False
        except StoreError as exc:
            # Refused for good (data Postgres cannot hold, a bug): a redelivery would be
            # refused again, and hold up every update after it. Answered, not kept.
            self.log.error("telegram update %s cannot be kept, answered without the inbox: %s",
                           update.update_id, exc)  # fmt: skip
            receipt = NOT_KEPT
        except Exception:  # the last guard: one broken update must not stop the others
            self.dispatcher.failed(self.name)
            self.log.exception("telegram update %s failed", update.update_id)
            return True
        if receipt.taken:  # else another worker has it in hand
            self._spawn(update.update_id, update.message, incoming)
        return True

    async def _rate(self, update: Update) -> bool:
        """Record the rating a reaction gives or takes back, before Telegram is told it
        arrived (a short statement or three); False if Postgres cannot be reached now, so
        that Telegram sends it again. A rating changes nothing else: not kept in the inbox."""
        event = feedback_event(update)
        if event is None:
            return True  # other emoji, an anonymous reaction: nothing to record
        try:
            await self.dispatcher.rate(event)
        except StoreUnavailable:
            return False
        except StoreError:  # refused for good: a redelivery would be refused again
            return True
        return True

    # -- handling --------------------------------------------------------------------------

    def _spawn(self, update_id: int, message: Message, incoming: IncomingMessage) -> None:
        answer = self._handle(update_id, message, incoming)
        task = asyncio.create_task(answer, name=f"telegram-{update_id}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, update_id: int, message: Message, incoming: IncomingMessage) -> None:
        # An update refused or cut off at shutdown is in the inbox: a sweep answers it.
        try:
            await self._answer(message, incoming)
        except ShuttingDown:
            return
        except Exception:  # the last guard: one broken update must not stop the others
            self.dispatcher.failed(self.name)
            self.log.exception("telegram update %s failed", update_id)

    async def _answer(self, message: Message, incoming: IncomingMessage) -> None:
        typing = asyncio.create_task(self._keep_typing(message))
        interval, booking = self.options.stream_interval_seconds, self.dispatcher.booking(self.name)
        surface = self._surface(message)
        pacers = (self._pacer, self._chat_pacers[str(message.chat_id)])
        async with LiveReply(surface, interval, booking, pacers) as live:

            async def show(piece: str) -> None:  # the reply as it is written
                typing.cancel()
                await live.add(piece)

            try:
                reply = await self.dispatcher.handle(incoming, show)
            finally:
                typing.cancel()
            nothing_to_send = reply.text is None and not live.streamed
            if nothing_to_send or await self._finish(live, incoming, reply.text or ""):
                self.dispatcher.delivered(incoming, reply, live.posts)

    async def end_stream(self, orphan: Orphan, note: str) -> None:
        """Edit the message left growing to its text and the note (a draft books nothing)."""
        bot = self._bot
        if bot is None:
            raise PlatformUnavailable("telegram is not connected")
        text = ended_text(orphan.text, note, MessageLimit.MAX_TEXT_LENGTH)
        chat_id, message_id = int(orphan.where["chat_id"]), int(orphan.where["message_id"])
        edit = partial(bot.edit_message_text, text, chat_id=chat_id, message_id=message_id)
        await _retried(edit, on_rate_limited=self._count_rate_limited)

    async def send_to(
        self, message: IncomingMessage, text: str, reply_id: uuid.UUID | None = None
    ) -> bool:
        """Send `text` as the reply to `message` (taken from the inbox, no Message in
        hand): in its chat and forum topic, the first part quoting it, as the reply to a
        group message does; late as it is, in a private chat too."""
        bot = self._bot
        if bot is None:
            return False  # not connected: the inbox tries again after a lease
        address = _address(message)
        if address is None:
            self.log.error("telegram message %s has no chat to reply in; dropped",
                           message.platform_message_id)  # fmt: skip
            return True
        chat_id, thread, quote = address
        posts: list[PostRef] = []
        try:
            for part in split_text(text, MessageLimit.MAX_TEXT_LENGTH):
                posts.append(post_of(await self._send_part(bot, chat_id, thread, quote, part)))
                quote = None  # only the first part says what it answers
        except CredentialsRejected:
            return False  # the adapter stops for it; the inbox keeps the reply
        except PlatformRejected as exc:  # the chat is gone, the bot was blocked: for good
            self.log.error(
                "reply to telegram chat %s refused, not tried again: %s",
                chat_id,
                exc,
                extra={"channel": self.name, "user_id": message.channel_user_id},
            )
            return True
        except PlatformError as exc:
            self.log.warning("reply to telegram chat %s not delivered now: %s", chat_id, exc)
            return False
        self.dispatcher.posted(self.name, reply_id, posts)
        return True

    async def _send_part(
        self, bot: Bot, chat_id: int, thread: int | None, quote: int | None, part: str
    ) -> Message:
        quoted = None
        if quote is not None:  # the message may be deleted by now: the reply goes anyway
            quoted = ReplyParameters(quote, allow_sending_without_reply=True)
        send = partial(
            bot.send_message, chat_id, part, message_thread_id=thread, reply_parameters=quoted
        )
        for pacer in (self._pacer, self._chat_pacers[str(chat_id)]):
            pacer.spend()  # a message always goes; the budget shared with streamed replies
        sent = await _retried(send, on_rate_limited=self._count_rate_limited)
        self.dispatcher.sent(self.name)
        return sent

    def _surface(self, message: Message) -> Any:
        send = partial(_retried, on_rate_limited=self._count_rate_limited)
        return surface_for(message, send, partial(self.dispatcher.sent, self.name))

    async def _finish(self, live: LiveReply, incoming: IncomingMessage, text: str) -> bool:
        """The reply's final update (all of it, if nothing was streamed); False if it
        could not be delivered."""
        try:
            await live.finish(text)
        except PlatformError as exc:
            self.log.error(
                "reply to telegram chat %s not delivered: %s",
                incoming.chat_id,
                exc,
                extra={"channel": self.name, "user_id": incoming.channel_user_id},
            )
            return False
        if live.streamed:
            self.dispatcher.streamed(self.name, live.updates)
        return True

    def _count_rate_limited(self) -> None:
        self.dispatcher.platform_rate_limited(self.name)

    async def _keep_typing(self, message: Message) -> None:
        await asyncio.sleep(TYPING_DELAY)
        while True:
            try:
                await message.reply_chat_action(ChatAction.TYPING)
            except TelegramError as exc:
                self.log.debug("typing status not shown: %s", exc.message)
            await asyncio.sleep(TYPING_EVERY)


async def _call(call: Awaitable[T]) -> T:
    """Await one Bot API call, with PTB's errors turned into the delivery policy's."""
    try:
        return await call
    except TelegramError as exc:
        # InvalidToken's message carries the token itself: leave it out of the chain.
        raise _platform_error(exc) from (None if isinstance(exc, InvalidToken) else exc)


async def _retried(
    request: Callable[[], Awaitable[T]],
    attempts: int = 6,
    deadline: float = 120.0,
    *,
    on_rate_limited: Callable[[], None] | None = None,
) -> T:
    """One Bot API request under the delivery retry policy; `request` makes a fresh one."""

    async def attempt() -> T:
        return await _call(request())

    return await deliver(
        attempt, attempts=attempts, deadline=deadline, on_rate_limited=on_rate_limited
    )


async def _is_admin(bot: Bot, message: IncomingMessage) -> bool:
    """Whether Telegram calls the writer an owner or administrator of the message's chat.
    A forum topic has no members of its own: its chat_id is its group's."""
    if message.chat_id is None:  # a private chat: nobody administers it
        return False
    chat_id, user_id = int(message.chat_id), int(message.channel_user_id)
    member = await _call(_chat_member(bot, chat_id, user_id))
    return member.status in ADMIN_STATUSES


async def _chat_member(bot: Bot, chat_id: int, user_id: int) -> ChatMember:
    """getChatMember's answer. PTB builds it without checking it, so an answer that is no
    ChatMember with a status raises here, as an unreadable one does: never a yes."""
    try:
        member = await bot.get_chat_member(chat_id, user_id)
    except MALFORMED as exc:
        raise PlatformUnavailable("Telegram's getChatMember answer is no ChatMember") from exc
    if not isinstance(member, ChatMember) or not isinstance(member.status, str):
        raise PlatformUnavailable("Telegram's getChatMember answer has no status string")
    return member


def _platform_error(exc: TelegramError) -> PlatformError:
    if isinstance(exc, RetryAfter):
        with warnings.catch_warnings():  # PTB 22 warns that this becomes a timedelta
            warnings.simplefilter("ignore", PTBDeprecationWarning)
            after = exc.retry_after
        seconds = after.total_seconds() if isinstance(after, timedelta) else float(after)
        return PlatformRateLimited(seconds, "(Telegram)")
    if isinstance(exc, InvalidToken):
        fix = "set TELEGRAM_BOT_TOKEN to the token @BotFather gave"
        return CredentialsRejected("Telegram rejected TELEGRAM_BOT_TOKEN", fix)
    if isinstance(exc, tg.BadRequest | tg.Forbidden | tg.EndPointNotFound | tg.ChatMigrated):
        return PlatformRejected(f"Telegram refused the call: {exc.message}")
    # NetworkError, TimedOut, Conflict (another poller), 5xx, unreadable answers.
    return PlatformUnavailable(f"Telegram unavailable: {exc.message}")


def _address(message: IncomingMessage) -> tuple[int, int | None, int | None] | None:
    """Where a reply to `message` goes, from its plain data: (chat id, forum topic or
    None, message id to quote or None); None if it names no chat."""
    try:
        chat_id = int(message.chat_id or "")
        topic = message.chat_kind is ChatKind.THREAD and message.thread_id is not None
        thread = int(message.thread_id or "") if topic else None
        quote = int(message.reply_to) if message.reply_to else None
    except ValueError:
        return None
    return chat_id, thread, quote


def _file_url(base_url: str) -> str:
    # Files are served beside the API: https://host/bot -> https://host/file/bot.
    head, found, _ = base_url.rpartition("/bot")
    return f"{head}/file/bot" if found else base_url


def _respond(status: int, description: str) -> web.Response:
    return web.json_response({"ok": status == 200, "description": description}, status=status)
