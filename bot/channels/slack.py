"""Slack: slack-bolt's AsyncApp over Socket Mode or the HTTP Events API.

Socket Mode when SLACK_APP_TOKEN is set, else the Events API on
SLACK_LISTEN:SLACK_PORT/slack/events: the body's size, the signature and timestamp,
the content type and the JSON are checked before bolt sees a request (4xx otherwise,
docs/channels/slack.md), and bolt answers url_verification. An event is acknowledged
(HTTP 200, or the Socket Mode envelope ack) once it is kept in the inbox, which is one
short statement, and its reply is computed after the ack: a slow reply never makes
Slack retry. An event that could not be kept is not acknowledged (503; no envelope
ack), so Slack sends it again; any retry carries the same event_id, the platform
message id the inbox and the service de-duplicate on. After a crash, another worker
answers what was kept (send_to: posted in the message's thread). A reply grows as
Slack's own stream in the message's thread
(bot/channels/slack_live.py). Who may configure a channel's thread is Slack's to say: users.info's
is_admin or is_owner (the workspace's admins and owners), never for a deleted account.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.cache.streams import Orphan
from bot.channels.base import (
    ChannelAdapter,
    check_declared_size,
    check_media_type,
    parse_json,
    read_body,
    refusal,
    webhook_application,
)
from bot.channels.delivery import deliver
from bot.channels.dispatch import Dispatcher
from bot.channels.live import LiveReply, ended_text
from bot.channels.options import SlackOptions
from bot.channels.pacing import Pacer
from bot.channels.slack_events import escape, incoming_message, profile_name
from bot.channels.slack_feedback import FEEDBACK_ACTION, feedback_event
from bot.channels.slack_live import TEXT_LIMIT, Place, SlackSurface
from bot.domain import IncomingMessage
from bot.errors import (
    CredentialsRejected,
    PlatformError,
    PlatformRateLimited,
    PlatformRejected,
    PlatformUnavailable,
    ShuttingDown,
    StoreError,
    WebhookRefused,
)
from bot.listening import start_site

T = TypeVar("T")

EVENTS_PATH = "/slack/events"
JSON_ONLY = frozenset({"application/json"})  # what the Events API posts
FORM = "application/x-www-form-urlencoded"  # what interactivity posts: payload=<JSON>
CONNECT_TIMEOUT = 30.0
WATCH_INTERVAL = 1.0
NAME_LOOKUP_TIMEOUT = 5.0  # a slow users.info must not hold the reply for long
ADMIN_LOOKUP_TIMEOUT = 5.0  # nor hold a chat's turn while the service waits for a yes or no
NAMES_CACHED = 10_000  # display names kept in memory, least recently used dropped first
# Slack wants an event acknowledged within 3 s, else it counts a failure and retries:
# an event not kept by then is refused rather than acknowledged late (the retry, or a
# sweep if it was kept after all, answers it).
KEEP_WITHIN = 2.5
# What bolt raises reading a body of a shape it does not expect (a list where it wants
# an object, a number where it wants text): it checks no types itself.
_UNREADABLE = (AttributeError, IndexError, KeyError, TypeError, ValueError)
_SERVER_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable"})
# A token Slack will never take: revoked, expired, malformed, or of a deleted account.
_TOKEN_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)
_USER_FLAGS = ("is_admin", "is_owner", "deleted")  # what users.info says of a user's role


class SlackAdapter(ChannelAdapter):
    name = "slack"
    reconnect_deadline = 120.0  # seconds without a Socket Mode connection before run() raises
    resumes = True  # an event left in the inbox is answered in its thread (send_to)

    def __init__(self, options: SlackOptions, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher)
        self.options = options
        secret = options.signing_secret
        self._verifier = SignatureVerifier(secret.get_secret_value()) if secret else None
        self._client = AsyncWebClient(
            token=options.bot_token.get_secret_value(),
            base_url=_base_url(options.api_base_url),
            logger=self.log,
            retry_handlers=[],  # deliver() is the one retry policy
        )
        self._app = AsyncApp(
            name=self.name,
            client=self._client,
            logger=_bolt_logger(self.log),
            signing_secret=secret.get_secret_value() if secret else "",
            request_verification_enabled=options.app_token is None,
            # The listener's end is the ack: it returns once the event is kept.
            process_before_response=True,
        )
        self._app.middleware(self._gate)
        self._app.error(self._on_bolt_error)
        self._app.event("message")(self._on_event)
        self._app.event("app_mention")(self._on_event)
        self._app.action(FEEDBACK_ACTION)(self._on_feedback)
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._up = False
        self._names: OrderedDict[str, str] = OrderedDict()  # user id -> display name (LRU)
        self._lookups: dict[str, asyncio.Future[str]] = {}  # users.info calls under way
        self.bot_user_id: str | None = None
        self.team_id: str | None = None  # the workspace's, for a stream's recipient
        self._streams_refused = False  # the workspace refused chat.startStream once
        # Slack's budgets per workspace, with margin: chat.appendStream is tier 4 (100 a
        # minute), chat.update tier 3 (50 a minute).
        self._append_pacer = Pacer(per_second=80 / 60, burst=10, updates_only=True)
        self._update_pacer = Pacer(per_second=40 / 60, burst=5, updates_only=True)
        self.port: int | None = None  # the HTTP port actually bound (SLACK_PORT may be 0)

    @property
    def connected(self) -> bool:
        if not self._up:
            return False
        if self._socket is None:
            return True
        client = self._socket.client
        session = client.current_session
        return not (client.closed or client.stale or session is None or session.closed)

    async def run(self) -> None:
        # The worker calls stop() on a crashed run before it runs the adapter again.
        self._stopping = False
        self._stop_event.clear()
        try:
            identity = await _credentials_checked(self._client.auth_test, "SLACK_BOT_TOKEN")
            self.bot_user_id = str(identity["user_id"])
            self.team_id = identity.get("team_id")
            # The service asks us who may configure a channel or thread; we ask Slack.
            self.dispatcher.allow_admins(self.name, functools.partial(_is_admin, self._client))
            if self.options.app_token is not None:
                await self._open_socket(self.options.app_token.get_secret_value())
            else:
                await self._open_http()
            self._up = True
            self.log.info("slack connected as %s", self.bot_user_id)
            await self._watch()
        finally:
            self._up = False
            await self._close_transport()

    async def stop(self) -> None:
        """No new events (refused, so Slack redelivers them), replies in flight finished."""
        self._stopping = True
        await self._close_transport()
        await self._drain(self.options.shutdown_grace_seconds)
        for lookup in list(self._lookups.values()):
            lookup.cancel()  # nobody waits for it any more
        self._up = False
        self._stop_event.set()

    async def _open_socket(self, app_token: str) -> None:
        handler = AsyncSocketModeHandler(
            self._app, app_token=app_token, logger=self.log, web_client=self._client
        )
        self._socket = handler
        # Ask for the websocket URL ourselves: the SDK would retry a refused token forever.
        handler.client.wss_uri = await _mapped(handler.client.issue_new_wss_url)
        try:
            await asyncio.wait_for(handler.connect_async(), CONNECT_TIMEOUT)  # type: ignore[no-untyped-call]
        except TimeoutError:
            raise PlatformUnavailable("Slack Socket Mode websocket did not open") from None

    async def _open_http(self) -> None:
        app = webhook_application(self.options.webhook_max_body_bytes)
        app.router.add_post(EVENTS_PATH, self._on_request)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        self._runner = runner
        await start_site(runner, self.options.listen, self.options.port, "SLACK_PORT")
        self.port = int(runner.addresses[0][1])
        self.log.info("slack events on %s:%s%s", self.options.listen, self.port, EVENTS_PATH)

    async def _watch(self) -> None:
        """Wait for stop(); raise if Socket Mode stays disconnected (the SDK reconnects)."""
        loop = asyncio.get_running_loop()
        lost_since: float | None = None
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), WATCH_INTERVAL)
            if self.connected or self._stopping:
                lost_since = None
                continue
            lost_since = lost_since or loop.time()
            if loop.time() - lost_since > self.reconnect_deadline:
                raise PlatformUnavailable("Slack Socket Mode connection lost")

    async def _close_transport(self) -> None:
        socket, self._socket = self._socket, None
        runner, self._runner = self._runner, None
        if socket is not None:
            await socket.close_async()  # type: ignore[no-untyped-call]
        if runner is not None:
            await runner.cleanup()

    async def _drain(self, grace: float) -> None:
        deadline = asyncio.get_running_loop().time() + grace
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            _, pending = await asyncio.wait(set(self._tasks), timeout=max(left, 0))
            if pending and left <= 0:
                self.log.warning("%d slack replies unfinished at shutdown", len(pending))
                for task in pending:
                    task.cancel()
                return

    async def _on_request(self, request: web.Request) -> web.Response:
        try:
            await self._check_request(request)
        except WebhookRefused as exc:
            return refusal(exc)
        try:
            bolt_request = await to_bolt_request(request)  # the body read and checked above
        except _UNREADABLE as exc:
            self._unreadable(exc)
            return refusal(WebhookRefused(400, "not a Slack event"))
        return await to_aiohttp_response(await self._app.async_dispatch(bolt_request))

    async def _check_request(self, request: web.Request) -> None:
        """What bolt would choke on, refused with a 4xx before bolt parses it.

        Size first, then the signature (bolt checks it again: cheap), so that nothing
        unauthenticated is parsed; then the body must be a JSON object: an event, or
        (form-encoded, in its one `payload` field) an interaction, a feedback click.
        """
        limit = self.options.webhook_max_body_bytes
        check_declared_size(request, limit)
        body = await read_body(request, limit)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookRefused(400, "request body is not UTF-8") from None
        if not self._signed(request, text):
            raise WebhookRefused(401, "invalid or missing signature, or a stale timestamp")
        if request.content_type == FORM:
            document = parse_json(_form_payload(text))
        else:
            check_media_type(request, JSON_ONLY | {FORM})
            document = parse_json(body)
        if not isinstance(document, dict):
            raise WebhookRefused(400, "request body is not a JSON object")

    def _signed(self, request: web.Request, text: str) -> bool:
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        # ASCII digits only: the SDK's int() raises on other text, and takes other digits.
        if self._verifier is None or not (timestamp.isascii() and timestamp.isdigit()):
            return False
        return self._verifier.is_valid(text, timestamp, signature)

    async def _on_bolt_error(self, error: Exception) -> BoltResponse | None:
        """Bolt's error handler: a body bolt cannot read is the sender's fault, a 400."""
        if isinstance(error, _UNREADABLE):
            self._unreadable(error)
            return BoltResponse(status=400, body="not a Slack event")
        self.log.error("slack request failed", exc_info=error)
        return None  # bolt answers 500

    def _unreadable(self, error: Exception) -> None:
        self.log.warning(
            "slack request answered 400: bolt could not read it (%s)",
            type(error).__name__,
            exc_info=error,
        )

    async def _gate(self, resp: BoltResponse, next: Callable[[], Awaitable[None]]) -> BoltResponse:
        """Refuse events while shutting down: unacked, Slack delivers them again."""
        if self._stopping or self.dispatcher.closing:
            return BoltResponse(status=503, body="shutting down")
        await next()
        return resp

    async def _on_event(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> BoltResponse | None:
        """Bolt's listener: its return is the ack (process_before_response). The event is
        kept in the inbox first, and answered after the ack; one that could not be kept
        is refused (503 over HTTP, no envelope ack in Socket Mode): Slack sends it again."""
        message = incoming_message(body, event, context.bot_user_id or self.bot_user_id)
        if message is None:
            return None
        try:
            await asyncio.wait_for(self._keep(message), KEEP_WITHIN)
        except (ShuttingDown, StoreError, TimeoutError) as exc:
            self.log.warning(
                "slack event %s not kept, so not acknowledged (Slack sends it again): %s",
                message.platform_message_id,
                exc or f"not within {KEEP_WITHIN} s",
            )
            return BoltResponse(status=503, body="not kept: send it again")
        return None  # bolt acknowledges it

    async def _on_feedback(
        self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        """A click of a reply's feedback buttons (block_actions): the rating recorded,
        then the click acknowledged, within Slack's 3 s. One Postgres cannot take now is
        acknowledged all the same: Slack never sends a click again (the dispatcher logs it)."""
        event = feedback_event(body, action)
        if event is not None:
            with contextlib.suppress(StoreError, TimeoutError):
                await asyncio.wait_for(self.dispatcher.rate(event), KEEP_WITHIN)
        await ack()

    async def _keep(self, message: IncomingMessage) -> None:
        """Keep the event in the inbox and, unless another worker holds it already,
        start answering it. The inbox keeps events in the order they are given to it,
        so a writer's answers start in the order the events came."""
        if (await self.dispatcher.receive(message)).taken:
            task = asyncio.create_task(self._answer(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: IncomingMessage) -> None:
        try:
            message = await self._named(message)
            surface, booking = self._surface(message), self.dispatcher.booking(self.name)
            pacer = self._update_pacer if self._streams_refused else self._append_pacer
            interval = self.options.stream_interval_seconds
            async with LiveReply(surface, interval, booking, (pacer,)) as live:
                reply = await self.dispatcher.handle(message, live.add)
                surface.rated = self._rated(reply.message_id)
                if reply.text is not None or live.streamed:
                    await live.finish(reply.text or "")
            if live.streamed:
                self.dispatcher.streamed(self.name, live.updates)
            self.dispatcher.delivered(message, reply)
        except ShuttingDown:
            self.log.warning("slack event %s arrived during shutdown", message.platform_message_id)
        except PlatformError as exc:
            self.log.error("slack reply to %s not delivered: %s", message.channel_user_id, exc)
        except Exception:  # the last guard: a bug must not kill the task silently
            self.dispatcher.failed(self.name)
            self.log.exception("slack event %s failed", message.platform_message_id)

    async def resume(self, message: IncomingMessage) -> None:
        """Answer an event from the inbox, under the writer's display name as a live one."""
        await super().resume(await self._named(message))

    async def send_to(
        self, message: IncomingMessage, text: str, reply_id: uuid.UUID | None = None
    ) -> bool:
        """Post `text` in the message's thread (cut into Slack-sized messages as a live
        reply is), with the feedback buttons if it is the stored reply `reply_id`; False
        when Slack is unreachable now, True once posted or refused for good (the channel
        is gone, the bot was removed from it: logged)."""
        surface = self._surface(message)
        surface.rated = self._rated(reply_id)
        live = LiveReply(surface, self.options.stream_interval_seconds)
        try:
            await live.finish(text)
        except PlatformRejected as exc:
            self.log.error("slack reply to %s refused for good: %s", message.channel_user_id, exc)
        except PlatformError as exc:
            self.log.warning("slack reply to %s not delivered now: %s", message.chat_id, exc)
            return False
        return True

    def _rated(self, reply_id: uuid.UUID | None) -> uuid.UUID | None:
        """The reply a message's feedback buttons rate; None: no buttons (SLACK_FEEDBACK_
        BUTTONS off, or not a stored reply: a command's answer, an apology)."""
        return reply_id if self.options.feedback_buttons else None

    async def _named(self, message: IncomingMessage) -> IncomingMessage:
        """The message with its writer's display name (events rarely carry it)."""
        if message.username is not None:
            return message
        name = await self._display_name(message.channel_user_id)
        return dataclasses.replace(message, username=name)

    async def _display_name(self, user_id: str) -> str:
        """The user's display name from users.info, cached; the id when Slack won't say."""
        cached = self._names.get(user_id)
        if cached is not None:
            self._names.move_to_end(user_id)
            return cached
        # One call per user at a time, and its waiters resume in arrival order: messages
        # of one user reach the service in the order they came.
        lookup = self._lookups.get(user_id)
        if lookup is None:
            lookup = self._lookups[user_id] = asyncio.ensure_future(self._look_up(user_id))
            lookup.add_done_callback(lambda _: self._lookups.pop(user_id, None))
        return await asyncio.shield(lookup)  # a cancelled waiter leaves it to the others

    async def _look_up(self, user_id: str) -> str:
        try:
            found = await _users_info(self._client, user_id, NAME_LOOKUP_TIMEOUT)
        except PlatformRejected as exc:  # no users:read scope, unknown user: it stays so
            self.log.warning("no display name for slack user %s: %s", user_id, exc)
            return self._remember(user_id, user_id)
        except PlatformError as exc:  # an outage: the next message asks again
            self.log.warning("no display name for slack user %s: %s", user_id, exc)
            return user_id
        user = found.get("user")
        fields = user if isinstance(user, dict) else {}
        name = profile_name(fields.get("profile"), fields.get("name"))
        return self._remember(user_id, name or user_id)

    def _remember(self, user_id: str, name: str) -> str:
        self._names[user_id] = name
        if len(self._names) > NAMES_CACHED:
            self._names.popitem(last=False)  # the least recently seen
        return name

    async def end_stream(self, orphan: Orphan, note: str) -> None:
        """Stop the stream left growing with the note appended, or update the message
        left growing (where streams are refused) to its text and the note."""
        channel, ts = orphan.where["channel"], orphan.where["ts"]
        if orphan.where.get("stream"):
            tail = escape(f"\n\n{note}")
            stop = functools.partial(self._client.chat_stopStream, markdown_text=tail)
            await self._send(functools.partial(stop, channel=channel, ts=ts))
        else:
            text = escape(ended_text(orphan.text, note, TEXT_LIMIT))
            update = functools.partial(self._client.chat_update, text=text)
            await self._send(functools.partial(update, channel=channel, ts=ts))

    def _surface(self, message: IncomingMessage) -> SlackSurface:
        """Where the reply to `message` grows: a stream in its thread (for the writer, in
        a channel), or a message posted and updated where streams are refused."""
        in_channel = not message.scope.private
        place = Place(
            channel=str(message.chat_id),
            thread_ts=message.thread_id,
            recipient_user_id=message.channel_user_id if in_channel else None,
            recipient_team_id=self.team_id if in_channel else None,
        )
        return SlackSurface(
            self._client,
            place,
            self._send,
            stream=not self._streams_refused,
            on_refused=self._refused_streams,
            on_sealed=functools.partial(self.dispatcher.sent, self.name),
        )

    async def _send(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Web API call under the delivery policy, its errors mapped to ours."""
        rate_limited = functools.partial(self.dispatcher.platform_rate_limited, self.name)
        return await deliver(functools.partial(_mapped, call), on_rate_limited=rate_limited)

    def _refused_streams(self, error: PlatformRejected) -> None:
        if not self._streams_refused:
            self._streams_refused = True
            self.log.warning(
                "slack refused chat.startStream (%s): replies grow by chat.update instead",
                error,
            )


async def _is_admin(client: AsyncWebClient, message: IncomingMessage) -> bool:
    """Whether Slack calls the writer an admin or owner of the workspace (a primary owner
    is an owner too). Slack tells a bot of no channel's managers: the workspace's admins
    and owners are those who may configure its channels and threads."""
    if message.scope.private:  # a DM: nobody administers it
        return False
    found = await _users_info(client, message.channel_user_id, ADMIN_LOOKUP_TIMEOUT)
    return _workspace_admin(found.get("user"))


def _workspace_admin(user: object) -> bool:
    """users.info's user object read as a yes or no. The SDK checks nothing in it, so a
    missing user or a flag that is no boolean ("true", 1, null) raises here: never a yes.
    A flag left out is false, as the spec makes each of them optional."""
    if not isinstance(user, dict):
        raise PlatformUnavailable("Slack's users.info answer has no user object")
    if not all(isinstance(user.get(flag, False), bool) for flag in _USER_FLAGS):
        raise PlatformUnavailable("Slack's users.info answer has flags that are no booleans")
    admin = user.get("is_admin") is True or user.get("is_owner") is True
    return admin and user.get("deleted") is not True


async def _users_info(client: AsyncWebClient, user_id: str, within: float) -> dict[str, Any]:
    """users.info's answer: a JSON object with `ok: true`. The SDK takes any `ok` that is
    truthy and fails unmapped (AttributeError) on JSON that is no object: mapped here."""
    try:
        found = await _mapped(lambda: asyncio.wait_for(client.users_info(user=user_id), within))
    except AttributeError as exc:
        raise PlatformUnavailable("Slack's users.info answer is no JSON object") from exc
    if not isinstance(found.data, dict) or found.data.get("ok") is not True:
        raise PlatformUnavailable("Slack's users.info answer is no JSON object with ok: true")
    return found.data


def _form_payload(text: str) -> bytes:
    """The JSON of an interaction's form body (payload=…), or 400 for any other form."""
    fields = parse_qs(text, keep_blank_values=True)
    if set(fields) != {"payload"} or len(fields["payload"]) != 1:
        raise WebhookRefused(400, "a form body must hold one payload field")
    return fields["payload"][0].encode()


def _base_url(url: str | None) -> str:
    return (url or AsyncWebClient.BASE_URL).rstrip("/") + "/"


async def _mapped(call: Callable[[], Awaitable[T]]) -> T:
    """Run one Slack API call, its failures mapped to the delivery errors."""
    try:
        return await call()
    except SlackApiError as exc:
        raise platform_error(exc) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PlatformUnavailable(f"Slack API unreachable ({type(exc).__name__})") from exc


class _TokenFromClient(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment itself, and then warns that the
    client given beside it wins: it does, and it holds that very token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


def _bolt_logger(log: logging.Logger) -> logging.Logger:
    bolt = log.getChild("bolt")
    if not any(isinstance(f, _TokenFromClient) for f in bolt.filters):
        bolt.addFilter(_TokenFromClient())
    return bolt


async def _credentials_checked(call: Callable[[], Awaitable[T]], setting: str) -> T:
    """A call that proves a token: refused for good, it names the setting to fix."""
    try:
        return await _mapped(call)
    except PlatformRejected as exc:
        if exc.code not in _TOKEN_ERRORS:
            raise
        fix = f"set {setting} to the token of the Slack app's settings (OAuth & Permissions)"
        raise CredentialsRejected(f"Slack rejected {setting} ({exc.code})", fix) from None


def platform_error(exc: SlackApiError) -> PlatformError:
    response = exc.response
    status = int(getattr(response, "status_code", None) or getattr(response, "status", 0) or 0)
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    detail = f"(HTTP {status}, {code or 'no error code'})"
    if status == 429 or code == "ratelimited":
        return PlatformRateLimited(_retry_after(getattr(response, "headers", None)), detail)
    if status >= 500 or status == 0 or code in _SERVER_ERRORS:
        return PlatformUnavailable(f"Slack API failed {detail}")
    return PlatformRejected(f"Slack API refused the call {detail}", code=code)


def _retry_after(headers: Mapping[str, str] | None) -> float:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            try:
                return max(float(value), 0.0)
            except ValueError:
                break
    return 1.0
