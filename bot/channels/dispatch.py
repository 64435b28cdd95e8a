"""Between the adapters and the service: in-flight tracking, shutdown, metrics.

Adapters hand every normalized message to `Dispatcher.handle`. On shutdown the
worker closes the dispatcher (new messages are refused with ShuttingDown, so the
platform redelivers them to another worker) and drains what is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

from bot.cache.streams import StreamBooking, StreamLedger
from bot.domain import (
    AdminCheck,
    FeedbackEvent,
    FeedbackOutcome,
    IncomingMessage,
    PostRef,
    Receipt,
    Reply,
    TextSink,
)
from bot.errors import ShuttingDown, StoreError
from bot.metrics import Metrics
from bot.service import ConversationService

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        service: ConversationService,
        metrics: Metrics,
        streams: StreamLedger | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.streams = streams  # None: streaming replies are not booked (bot/cache/streams.py)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def closing(self) -> bool:
        """True once close() was called: adapters stop acknowledging new events."""
        return self._closing

    async def receive(self, message: IncomingMessage) -> Receipt:
        """Keep `message` in the inbox (bot/inbox.py); only then may the adapter tell the
        platform it arrived. ShuttingDown or StoreError: it was not kept, the platform
        must not be told (it delivers it again; Discord, which never does, tells the user
        it cannot answer). A receipt not `taken`: another worker has it in hand."""
        if self._closing:
            self.refused(message.channel)
            raise ShuttingDown("the worker is shutting down")
        return await self.service.receive(message)

    async def handle(self, message: IncomingMessage, on_text: TextSink | None = None) -> Reply:
        """The service's reply to `message`. With `on_text` (the adapter's display of a
        reply as it grows), pieces are shown as they are written; the Reply is whole.
        While closing, only a message kept in the inbox here is answered: the platform
        was told it arrived (it was received before close()), and will not send it
        again; the drain, and the adapter's grace, wait for it."""
        if self._closing and self.service.inbox.receipt(message) is None:
            self.refused(message.channel)
            raise ShuttingDown("the worker is shutting down")
        self._in_flight += 1
        self._idle.clear()
        started = time.perf_counter()
        self.metrics.messages_in.labels(message.channel).inc()
        shown = self._timed(on_text, message.channel, started) if on_text else None
        try:
            reply = await self.service.handle(message, shown)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        self.metrics.reply_latency.labels(message.channel).observe(time.perf_counter() - started)
        log.info(
            "%s message from %s answered (%s)",
            message.channel,
            message.channel_user_id,
            reply.kind,
            extra={
                "channel": message.channel,
                "user_id": message.channel_user_id,
                "conversation_id": reply.conversation_id,
            },
        )
        return reply

    def _timed(self, on_text: TextSink, channel: str, started: float) -> TextSink:
        """`on_text`, timing the first piece shown (bot_first_token_seconds)."""
        first = True

        async def show(piece: str) -> None:
            nonlocal first
            await on_text(piece)
            if first:
                first = False
                self.metrics.first_text.labels(channel).observe(time.perf_counter() - started)

        return show

    def booking(self, channel: str) -> StreamBooking | None:
        """Where an adapter books a reply as it streams, for a sweep to end it should
        this worker die mid-reply."""
        return self.streams.booking(channel) if self.streams is not None else None

    def streamed(self, channel: str, updates: int) -> None:
        """An adapter finished showing a streamed reply in `updates` posts and edits."""
        self.metrics.stream_updates.labels(channel).observe(updates)

    def allow_admins(self, channel: str, check: AdminCheck) -> None:
        """The adapter's way of asking its platform who may configure a chat."""
        self.service.allow_admins(channel, check)

    def sent(self, channel: str) -> None:
        """An adapter delivered a reply (or one part of it) to the platform."""
        self.metrics.messages_out.labels(channel).inc()

    def delivered(
        self, message: IncomingMessage, reply: Reply, posts: Sequence[PostRef] = ()
    ) -> None:
        """An adapter delivered the whole `reply` to `message`: its event is done (unless
        the reply said to come again). `posts`: the platform messages showing it, which
        reactions name (bot/feedback.py)."""
        self.service.delivered(message, reply.kind)
        self.posted(message.channel, reply.message_id, posts)

    def posted(self, channel: str, reply_id: uuid.UUID | None, posts: Sequence[PostRef]) -> None:
        """`posts` on `channel` show the stored reply `reply_id` (None: no stored reply,
        nothing to rate): kept for the ratings that name them."""
        if reply_id is not None:
            self.service.feedback.posted(channel, reply_id, posts)

    async def rate(self, event: FeedbackEvent) -> FeedbackOutcome:
        """Record a user's rating of a reply (or its removal), as an adapter translated
        it; StoreError if Postgres cannot be reached now."""
        try:
            outcome = await self.service.feedback.rate(event)
        except StoreError as exc:
            log.warning("%s feedback from %s not recorded: %s",
                        event.channel, event.channel_user_id, exc)  # fmt: skip
            raise
        if outcome is not FeedbackOutcome.IGNORED:
            rating = event.rating.name.lower() if event.rating is not None else "removed"
            self.metrics.feedback.labels(event.channel, rating).inc()
        log.info("%s feedback from %s: %s", event.channel, event.channel_user_id, outcome,
                 extra={"channel": event.channel, "user_id": event.channel_user_id})  # fmt: skip
        return outcome

    def refused(self, channel: str) -> None:
        """A message was turned away because the worker (or its adapter) is stopping."""
        self.metrics.refused_at_shutdown.labels(channel).inc()

    def failed(self, channel: str) -> None:
        """An adapter's last-resort guard caught an error nothing else handles (a bug)."""
        self.metrics.adapter_errors.labels(channel).inc()

    def platform_rate_limited(self, channel: str) -> None:
        """A platform call waits out the platform's rate limit before its next try."""
        self.metrics.platform_rate_limited.labels(channel).inc()

    def close(self) -> None:
        self._closing = True

    async def drain(self, grace: float) -> bool:
        """Wait for in-flight messages; False if some were still running at the deadline.
        Replies still streaming STREAM_SHUTDOWN_MARGIN_SECONDS before it are cut off
        (stored and shown as interrupted), so that they end in time, not mid-sentence;
        never before half the grace period."""
        margin = min(self.service.settings.stream_shutdown_margin_seconds, grace / 2)
        if await self._idle_within(max(0.0, grace - margin)):
            return True
        if margin > 0:
            log.info("cutting off the replies still streaming (%d in flight)", self._in_flight)
            self.service.stop_streams()
            if await self._idle_within(min(margin, grace)):
                return True
        log.warning("%d messages still in flight at shutdown", self._in_flight)
        return False

    async def _idle_within(self, seconds: float) -> bool:
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True
