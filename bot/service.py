"""ConversationService: the one place the message flow of DESIGN.md lives.

Per message: validate, take the user's lock and read all hot state in one Redis
round trip, fill misses from Postgres, rate limit, answer a command or ask the
responder, store the exchange in one Postgres transaction, then refresh Redis in
one round trip. Redis failing degrades to Postgres; Postgres failing is retried and
then told to the user, with nothing half-written.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial

from bot import commands, quotas
from bot.blockset import BlockSource, StaticBlocklist
from bot.cache.hotstate import HotStateCache
from bot.cache.state import ContextUpdate, HotState, QuotaUse, RateCount, Refresh
from bot.chat_configs import ChatConfigs
from bot.config import Settings
from bot.domain import (
    NOT_KEPT,
    AdminCheck,
    ChannelSettings,
    ContextMessage,
    ConversationMode,
    IncomingMessage,
    Interruption,
    Permission,
    Receipt,
    RecentContext,
    Reply,
    ReplyKind,
    SessionState,
    StoredExchange,
    TextSink,
    default_mode,
    resolve_model,
)
from bot.errors import (
    CacheUnavailable,
    InvalidInput,
    LockTimeout,
    ModerationUnavailable,
    ReplyDeferred,
    ResponderError,
    ResponderRejected,
    StaleSession,
    StoreError,
    StoreUnavailable,
    TurnConflict,
)
from bot.experimentset import Assignment, ExperimentSource, StaticExperiments
from bot.feedback import Feedback
from bot.flagset import MAINTENANCE, REPLIES_DISABLED, FlagSource, StaticFlags
from bot.inbox import Inbox
from bot.local import Backoff, LocalRateLimiter
from bot.quotas import Spent
from bot.relay import Relay
from bot.responders.base import (
    Moderator,
    Responder,
    ResponderRequest,
    ResponderResult,
    estimate_tokens,
)
from bot.store.conversations import ExchangeRows, ReplyRow
from bot.store.inbox import Taken
from bot.store.store import Store
from bot.store.turn_hold import TurnHold
from bot.store.turn_start import TurnStart
from bot.summaries import Summarizer, window_after
from bot.tallies import CacheRead, Tally
from bot.validation import (
    check_chat_id,
    check_thread_id,
    check_user_id,
    clean_text,
    clean_username,
    storable_event_id,
)

log = logging.getLogger(__name__)

UNAVAILABLE_TEXT = "Sorry, I can't answer right now. Please try again in a minute."
BUSY_TEXT = "I'm still busy with your previous message. Please send this one again shortly."
RESPONDER_FAILED_TEXT = "Sorry, I couldn't come up with a reply just now. Please try again."
ADMIN_CHECK_SECONDS = 5.0  # longest a platform may take to say who is an admin
DEFERRED_TEXT = "I can't reply just now. I'll send my answer here as soon as I can."
LONGEST_RETRY_PAUSE = 60.0  # s between tries of a deferred reply, at most
INTERRUPTED_NOTE = "[My reply was interrupted here. Please ask again if you need the rest.]"
REFUSED_TEXT = "Sorry, I can't help with that message."  # moderation flagged it
REFUSED_REPLY_TEXT = "Sorry, I can't answer that."  # stored in place of a flagged reply
UNCHECKED_TEXT = "Sorry, I can't check your message right now. Please try again in a minute."
UNCHECKED_REPLY_TEXT = "Sorry, I can't check my reply right now. Please ask again in a minute."
SUMMARY_DRAIN_SECONDS = 10.0  # at shutdown, for the summaries being made to finish


@dataclass(slots=True)
class Turn:
    """The state one message is handled with, filled from Redis or Postgres."""

    message: IncomingMessage
    session: SessionState
    channel: ChannelSettings
    rate: RateCount
    refresh: Refresh
    taken_over: bool  # an earlier handling of this event never finished (Redis says)
    shared: bool  # a shared conversation: who wrote each message is kept and told
    loaded_context: RecentContext | None = None  # read with the session from Postgres
    on_text: TextSink | None = None  # the adapter shows the reply as it is written
    receipt: Receipt | None = None  # kept in the inbox: a failed reply may be deferred
    assignment: Assignment | None = None  # the writer's variant, if an experiment decides

    @property
    def author(self) -> str | None:
        """The writer's name, as the context of a shared conversation gives it."""
        message = self.message
        return (message.username or message.channel_user_id) if self.shared else None


class _TurnDeferred(Exception):
    """A deferred reply, put back within its turn, on its way out of the turn (which
    ends as failed: nothing of the exchange is settled in Redis)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__("reply deferred")
        self.reply = reply


class ConversationService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: HotStateCache,
        responder: Responder,
        chats: ChatConfigs,
        flags: FlagSource | None = None,
        blocklist: BlockSource | None = None,
        moderator: Moderator | None = None,
        experiments: ExperimentSource | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))  # the quotas' days and months
        self.store = store
        self.cache = cache
        self.responder = responder
        self.chats = chats
        self.flags = flags or StaticFlags()  # held in memory: no round trip per message
        self.blocklist = blocklist or StaticBlocklist()  # the same
        self.moderator = moderator  # None: MODERATION=off
        self.experiments = experiments or StaticExperiments()  # in memory, like the flags
        self.stats: Counter[Tally] = Counter()
        # LLM tokens of the stored replies by (model, "prompt" | "completion"): /metrics
        self.tokens: Counter[tuple[str, str]] = Counter()
        lease, wait = settings.inbox_lease_seconds, settings.lock_wait_seconds
        self.inbox = Inbox(store.inbox, lease, wait)
        self.feedback = Feedback(store.feedback)  # ratings of replies (bot/feedback.py)
        self._published: Counter[Tally] = Counter()
        self._local_rate = LocalRateLimiter()
        self._admin_checks: dict[str, AdminCheck] = {}
        self._stopping = asyncio.Event()  # set at shutdown: streams are cut off
        self._command_options = commands.CommandOptions(
            settings.default_model, tuple(settings.allowed_models), settings.history_default
        )
        self.summaries = Summarizer(settings, store, cache, responder, self.stats)

    def delivered(self, message: IncomingMessage, kind: ReplyKind) -> None:
        """The adapter delivered the reply to `message` (all of it) to the platform: its
        event is done, and a redelivery of it says nothing. Unless that reply told the
        user to come again ("can't answer", "busy"): the event stays open for its
        redelivery, which takes over the claim left unfinished (or still another's).
        Marked done, it would be a silent duplicate, and a commit whose answer was lost
        never told."""
        if kind in (ReplyKind.UNAVAILABLE, ReplyKind.DEFERRED):
            return  # the inbox keeps it: a redelivery or a sweep answers it
        if kind is ReplyKind.BLOCKED:
            return  # never kept nor claimed: nothing to close
        event = storable_event_id(message.platform_message_id)
        message = replace(message, platform_message_id=event)
        self.cache.mark_delivered(message)
        self.inbox.delivered(message)

    def adopt(self, taken: Taken) -> IncomingMessage:
        """An event a sweep took from the inbox, to be answered as a resumed one."""
        self.stats[Tally.RESUMED] += 1
        return self.inbox.adopt(taken)

    async def receive(self, message: IncomingMessage) -> Receipt:
        """Keep the event in the inbox before the platform is told it arrived; StoreError
        if it cannot be kept (then the platform must not be told). A blocked writer's
        is not kept: it costs nothing."""
        if self.blocklist.current.blocks(message.channel, message.channel_user_id):
            return NOT_KEPT
        return await self.inbox.receive(message)

    async def close(self) -> None:
        """Finish the summaries being made (for a while), and write what is pending:
        delivered events, reply posts, tallies (at shutdown)."""
        await self.summaries.drain(SUMMARY_DRAIN_SECONDS)
        await self.cache.flush_delivered()
        await self.inbox.flush()
        await self.feedback.flush()
        await self.publish_stats()

    async def publish_stats(self) -> None:
        """Send the tallies counted since the last call to Redis; kept for later if down."""
        delta = self.stats - self._published
        if not delta:
            return
        try:
            await self.cache.add_stats(delta)
        except CacheUnavailable:
            return
        self._published.update(delta)

    def stop_streams(self) -> None:
        """Cut off the replies streaming now (at shutdown): each is stored and shown
        as interrupted, so that its handling ends within the grace period."""
        self._stopping.set()

    async def handle(self, message: IncomingMessage, on_text: TextSink | None = None) -> Reply:
        """Answer one incoming message; never raises for bad input or a failing store.
        With `on_text` (and STREAM_REPLIES), the reply is given to it piece by piece as
        it is written; the Reply returned is then the whole of it, stored."""
        if self._blocked(message):
            return Reply(None, ReplyKind.BLOCKED)
        flags = self.flags.current
        if flags.enabled(MAINTENANCE, message.channel):
            self.stats[Tally.MAINTENANCE] += 1
            return Reply(flags.maintenance_text(message.channel), ReplyKind.MAINTENANCE)
        if flags.enabled(REPLIES_DISABLED, message.channel):
            self.stats[Tally.MUTED] += 1
            return Reply(None, ReplyKind.MUTED)
        try:
            message = self._validated(message)
        except InvalidInput as exc:
            self.stats[Tally.INVALID] += 1
            return Reply(str(exc), ReplyKind.INVALID)
        receipt = self.inbox.receipt(message)
        if receipt is None:
            return await self._answer(message, None, on_text)
        self.inbox.working(receipt)
        try:
            return await self._answer(message, receipt, on_text)
        except Exception:
            # A bug: nothing of ours gets past _answer. The event is done with, as before
            # the inbox, rather than tried again and again, holding up the writer's next
            # messages; the adapter counts and logs it.
            self.inbox.delivered(message)
            raise
        finally:
            self.inbox.idle(receipt)

    def _blocked(self, message: IncomingMessage) -> bool:
        """The writer is on the blocklist (held in memory): no reply, nothing stored,
        no store reached; counted, and logged without the text."""
        if not self.blocklist.current.blocks(message.channel, message.channel_user_id):
            return False
        self.stats[Tally.BLOCKED] += 1
        log.debug("ignored a message of blocked %s:%s", message.channel, message.channel_user_id)
        return True

    async def _answer(
        self, message: IncomingMessage, receipt: Receipt | None, on_text: TextSink | None
    ) -> Reply:
        try:
            if receipt is not None and await self.inbox.unanswered_older(receipt):
                return await self._put_behind(receipt)
            chat = await self.chats.layer_for(message.channel, message.scope)
            if chat.muted:
                self.stats[Tally.MUTED] += 1
                return Reply(None, ReplyKind.MUTED)
            shared = self._shared(message, chat)
            # A reply to moderate is checked whole before anything of it is shown.
            streams = self.settings.stream_replies and not self._moderates("output")
            stream = on_text if streams else None
            return await self._in_turn(message, chat, shared, stream, receipt)
        except _TurnDeferred as deferred:
            return deferred.reply
        except LockTimeout:
            self.stats[Tally.LOCK_TIMEOUT] += 1
            return Reply(BUSY_TEXT, ReplyKind.UNAVAILABLE)
        except StoreError as exc:
            # The claim is released as unfinished: a commit may have gone through
            # unacknowledged, and a redelivery checks Postgres.
            self._store_failed(message, exc)
            return Reply(UNAVAILABLE_TEXT, ReplyKind.UNAVAILABLE)

    def _validated(self, message: IncomingMessage) -> IncomingMessage:
        """The message as it will be stored, or InvalidInput saying why it cannot be."""
        return replace(
            message,
            channel_user_id=check_user_id(message.channel_user_id),
            username=clean_username(message.username),
            text=clean_text(message.text, self.settings.max_message_chars),
            platform_message_id=storable_event_id(message.platform_message_id),
            chat_id=check_chat_id(message.chat_id, message.chat_kind),
            thread_id=check_thread_id(message.thread_id, message.chat_kind),
        )

    def _shared(self, message: IncomingMessage, chat: ChannelSettings) -> bool:
        """Whether the message's group or thread talks in one shared conversation: as the
        chat says, else the platform's default (bot/domain.py, default_mode)."""
        if message.scope.private:
            return False
        chosen = chat.settings.get("conversation_mode")
        mode = chosen if chosen in set(ConversationMode) else None
        mode = mode or default_mode(message.channel, message.chat_kind)
        return mode == ConversationMode.SHARED

    async def _put_behind(self, receipt: Receipt) -> Reply:
        """An older message of the writer's is in the inbox and nobody answers it now (its
        reply was deferred, or its worker died): this one goes behind it, and the sweep
        answers both in order."""
        self.stats[Tally.QUEUED] += 1
        await self.inbox.put_back(receipt, 0.0, told=False)
        return Reply(None, ReplyKind.DEFERRED)

    async def _deferred(
        self, message: IncomingMessage, receipt: Receipt | None, deferral: ReplyDeferred
    ) -> Reply:
        """The responder failed for now: the message goes back to the inbox for a later
        try; its writer is told once that the answer will come."""
        assert receipt is not None  # only a kept message is deferred
        self.stats[Tally.DEFERRED] += 1
        log.warning(
            "%s:%s: no reply for now (%s); trying again in %g s",
            message.channel, message.channel_user_id, deferral.cause, deferral.after,
        )  # fmt: skip
        if not await self.inbox.put_back(receipt, deferral.after, told=True):
            return Reply(None, ReplyKind.DEFERRED)  # taken by another: it tells
        return Reply(None if receipt.told else DEFERRED_TEXT, ReplyKind.DEFERRED)

    def _deferral(self, turn: Turn, exc: ResponderError) -> ReplyDeferred | None:
        """Whether a failed reply is tried again later: a failure that may pass (not a
        4xx) of a message kept in the inbox, within RESPONDER_RETRY_SECONDS of its
        arrival."""
        receipt = turn.receipt
        if receipt is None or receipt.received_at is None or isinstance(exc, ResponderRejected):
            return None
        waited = (datetime.now(UTC) - receipt.received_at).total_seconds()
        if waited >= self.settings.responder_retry_seconds:
            return None
        pause = self.settings.inbox_sweep_seconds * 2**receipt.tries
        return ReplyDeferred(min(pause, LONGEST_RETRY_PAUSE), exc)

    async def _in_turn(
        self,
        message: IncomingMessage,
        chat: ChannelSettings,
        shared: bool,
        on_text: TextSink | None = None,
        receipt: Receipt | None = None,
    ) -> Reply:
        """Handle the message in its turn (bot/cache/claim.py): its writer's, or its
        shared conversation's, with its chat's settings laid over its platform's."""
        async with self.cache.claim(message, shared, self.clock()) as claim:
            if claim.duplicate:
                self.stats[Tally.DUPLICATE] += 1
                return Reply(None, ReplyKind.DUPLICATE)
            if claim.hot is None:
                self.stats[Tally.CACHE_UNAVAILABLE] += 1
            if receipt is not None and await self.inbox.older_waiting(receipt):
                return await self._put_behind(receipt)
            hot = claim.hot
            try:
                reply, refresh = await self._process(
                    message, hot, chat, shared, on_text, receipt, claim.now
                )
            except ReplyDeferred as deferral:
                # Put back while the turn is held: a newer message of the writer waiting
                # for the turn then finds it put back, and goes behind it.
                reply = await self._deferred(message, receipt, deferral)
                raise _TurnDeferred(reply) from deferral
            claim.settle_with(refresh)
        self._summarise_if_due(message, shared, reply, hot, refresh)
        return reply

    def _summarise_if_due(
        self,
        message: IncomingMessage,
        shared: bool,
        reply: Reply,
        hot: HotState | None,
        refresh: Refresh,
    ) -> None:
        """After the turn (its exchange stored, the cache refreshed, nobody waiting on
        it): the conversation's oldest part is summarised in the background if the
        context its next turn reads outgrew its budget (bot/summaries.py)."""
        if not self.summaries.enabled:
            return  # not even the window is built: this runs after every turn
        if reply.kind is ReplyKind.ANSWER and reply.conversation_id and reply.model:
            window = window_after(hot.context if hot else None, refresh)
            self.summaries.consider(message, shared, reply.conversation_id, reply.model, window)

    def _store_failed(self, message: IncomingMessage, exc: StoreError) -> None:
        # One line with the error class: the user is told, the claim released, the
        # platform may redeliver, and nothing of the exchange was written.
        log.error(
            "cannot store message from %s:%s: %s", message.channel, message.channel_user_id, exc
        )
        unavailable = isinstance(exc, StoreUnavailable)
        self.stats[Tally.STORE_UNAVAILABLE if unavailable else Tally.STORE_FAILED] += 1

    async def _process(
        self,
        message: IncomingMessage,
        hot: HotState | None,
        chat: ChannelSettings,
        shared: bool,
        on_text: TextSink | None,
        receipt: Receipt | None,
        now: datetime,
    ) -> tuple[Reply, Refresh]:
        turn = await self._prepare(message, hot, chat, shared)
        resumed = receipt is not None and receipt.resumed
        turn = replace(
            turn, on_text=on_text, receipt=receipt, taken_over=turn.taken_over or resumed
        )
        limit = turn.channel.rate_limit(self.settings.rate_limit_per_minute)
        if turn.rate.count > limit:
            return self._rate_limited(turn, limit), turn.refresh
        command = commands.parse(message.text)
        if command is not None:
            self.stats[Tally.COMMAND] += 1
            return await self._command(command, turn)
        over, rebuilt = await self._quota(turn, hot, now)
        if over is not None:
            return over, replace(turn.refresh, quota=QuotaUse(0, rebuilt))
        if (refusal := await self._refused_input(turn)) is not None:
            return refusal, replace(turn.refresh, quota=QuotaUse(0, rebuilt))
        reply, refresh = await self._exchange(turn, hot.context if hot else None)
        spent = refresh.quota.tokens if refresh.quota else 0
        return reply, replace(refresh, quota=QuotaUse(spent, rebuilt))

    async def _quota(
        self, turn: Turn, hot: HotState | None, now: datetime
    ) -> tuple[Reply | None, dict[quotas.Counter, int]]:
        """A refusal if the writer's or chat's token quota is used up (bot/quotas.py),
        and the counts of the counters Redis did not hold, rebuilt from Postgres: read
        only then, and only when a quota applies."""
        message = turn.message
        counters = quotas.counters_of(message)
        limits = quotas.limits(self.settings, turn.channel)
        if not any(limits[c] for c in counters):
            return None, {}
        spent = hot.spent if hot is not None and hot.spent is not None else Spent({})
        rebuilt: dict[quotas.Counter, int] = {}
        if spent.missing(counters):
            self.stats[Tally.QUOTA_REBUILT] += 1
            chat = quotas.chat_of(message)
            truth = await self.store.usage.spent(message.channel, turn.session.user_id, chat, now)
            rebuilt = {c: n for c, n in truth.tokens.items() if c not in spent.tokens}
            spent = Spent({**truth.tokens, **spent.tokens})
        found = quotas.exceeded(spent, limits, counters, now)
        if found is None:
            return None, rebuilt
        self.stats[Tally.OVER_QUOTA] += 1
        return Reply(quotas.refusal(found, now), ReplyKind.OVER_QUOTA), rebuilt

    async def _command(self, command: commands.Command, turn: Turn) -> tuple[Reply, Refresh]:
        context = commands.CommandContext(
            channel=turn.message.channel,
            scope=turn.message.scope,
            shared=turn.shared,
            session=turn.session,
            channel_settings=turn.channel,
            conversations=self.store.conversations,
            chat_settings=self.chats,
            may_configure=partial(self._may_configure, turn.message),
            options=self._command_options,
            variant_model=_model_of(self._assignment(turn)),
        )
        result = await commands.run(command, context)
        refresh = turn.refresh
        if result.session is not None:
            refresh = replace(refresh, session=result.session)
        if result.new_conversation:
            refresh = replace(refresh, context=[], context_update=ContextUpdate.REPLACE)
        return result.reply, refresh

    async def _prepare(
        self, message: IncomingMessage, hot: HotState | None, chat: ChannelSettings, shared: bool
    ) -> Turn:
        session = hot.session if hot else None
        self._count(CacheRead.SESSION, session is not None)
        started = None
        if session is None:  # one round trip: writer, conversation, config and context
            started = await self._start_turn(message, shared)
            session = started.session if started else await self._load_session(message, shared)
        channel = hot.channel if hot else None
        self._count(CacheRead.CHANNEL_CONFIG, channel is not None)
        loaded_channel = None
        if channel is None and started is not None:
            channel = loaded_channel = started.channel
        elif channel is None:
            channel = loaded_channel = await self.store.conversations.load_channel(message.channel)
        rate = (hot.rate if hot else None) or await self._count_rate(session.user_id, message, hot)
        refresh = Refresh(session=session, channel=loaded_channel)
        taken_over = hot is not None and hot.taken_over
        context = started.context if started else None
        channel = chat.over(channel)
        return Turn(message, session, channel, rate, refresh, taken_over, shared, context)

    async def _count_rate(
        self, user_id: uuid.UUID, message: IncomingMessage, hot: HotState | None
    ) -> RateCount:
        if hot is not None:
            try:
                return await self.cache.count_rate(user_id, message)
            except CacheUnavailable:
                pass
        count, retry_after = self._local_rate.hit(str(user_id))
        return RateCount(count, retry_after)

    def _moderates(self, direction: str) -> bool:
        """Whether MODERATION checks the user's messages ("input") or the replies ("output")."""
        return self.moderator is not None and self.settings.moderation in (direction, "both")

    async def _flagged(self, message: IncomingMessage, text: str, direction: str) -> bool | None:
        """Whether moderation flags `text`; None when it cannot tell (counted, logged
        without the text)."""
        assert self.moderator is not None
        try:
            return await self.moderator.flagged(text)
        except ModerationUnavailable as exc:
            self.stats[Tally.MODERATION_ERROR] += 1
            log.warning(
                "%s:%s: %s not checked (%s); MODERATION_FAIL=%s",
                message.channel, message.channel_user_id, direction, exc,
                self.settings.moderation_fail,
            )  # fmt: skip
            return None

    async def _refused_input(self, turn: Turn) -> Reply | None:
        """Input moderation: a flagged message is refused before the responder is called,
        and nothing of it is stored; one that cannot be checked passes, unless
        MODERATION_FAIL=closed."""
        if not self._moderates("input"):
            return None
        message = turn.message
        flagged = await self._flagged(message, message.text, "input")
        if flagged is None and self.settings.moderation_fail == "closed":
            return Reply(UNCHECKED_TEXT, ReplyKind.REFUSED)
        if not flagged:
            return None
        self.stats[Tally.REFUSED_INPUT] += 1
        log.info("%s:%s: message flagged by moderation, refused",
                 message.channel, message.channel_user_id)  # fmt: skip
        return Reply(REFUSED_TEXT, ReplyKind.REFUSED)

    async def _checked_reply(
        self, turn: Turn, result: ResponderResult | None
    ) -> tuple[ResponderResult | None, str | None]:
        """Output moderation: a flagged reply (or, MODERATION_FAIL=closed, one that cannot
        be checked) is replaced by a refusal, with why ("flagged", "unchecked")."""
        if result is None or not self._moderates("output"):
            return result, None
        flagged = await self._flagged(turn.message, result.text, "output")
        if flagged is None and self.settings.moderation_fail == "closed":
            return replace(result, text=UNCHECKED_REPLY_TEXT), "unchecked"
        if not flagged:
            return result, None
        self.stats[Tally.REFUSED_OUTPUT] += 1
        log.info("%s:%s: reply flagged by moderation, replaced by a refusal",
                 turn.message.channel, turn.message.channel_user_id)  # fmt: skip
        return replace(result, text=REFUSED_REPLY_TEXT), "flagged"

    def _rate_limited(self, turn: Turn, limit: int) -> Reply:
        self.stats[Tally.RATE_LIMITED] += 1
        if turn.rate.count > limit + 1:
            return Reply(None, ReplyKind.RATE_LIMITED)  # told once per window is enough
        seconds = turn.rate.retry_after
        return Reply(
            f"You're sending messages faster than I can keep up with ({limit} a minute). "
            f"Please try again in {seconds} second{'s' if seconds != 1 else ''}.",
            ReplyKind.RATE_LIMITED,
        )

    async def _exchange(
        self, turn: Turn, cached: RecentContext | None, *, retried: bool = False
    ) -> tuple[Reply, Refresh]:
        """The exchange, stored in order: when another handling stored a message of the
        conversation since its context was read (Redis forgot the turn's lock), it is
        answered again on the newer context, once that handling's reply is stored."""
        backoff = Backoff(self.settings.lock_wait_seconds, longest=0.5)
        while True:
            try:
                return await self._exchange_once(turn, cached, retried=retried)
            except TurnConflict as conflict:
                self.stats[Tally.TURN_CONFLICT] += 1
                log.info("%s; answering again on the newer context", conflict)
                if not await backoff.pause():
                    raise LockTimeout(str(turn.session.conversation_id)) from conflict
                cached, turn = None, await self._reread(turn)

    async def _reread(self, turn: Turn) -> Turn:
        """The turn, to be answered again on what Postgres holds: the context (read by
        the next try) and the session, which may be as stale as the cached context was
        (a Redis restored from an older snapshot: a /model since). Only after a
        conflict: the warm path reads neither."""
        session = await self._load_session(turn.message, turn.shared)
        refresh = replace(turn.refresh, session=session)
        return replace(turn, session=session, refresh=refresh, loaded_context=None)

    async def _exchange_once(
        self, turn: Turn, cached: RecentContext | None, *, retried: bool
    ) -> tuple[Reply, Refresh]:
        self._count(CacheRead.CONTEXT, cached is not None)
        if cached is not None:
            recent = cached
        elif turn.loaded_context is not None:
            recent = turn.loaded_context
        else:
            recent = await self.store.conversations.load_context(
                turn.session.conversation_id, self.settings.context_messages
            )
        context = _without_itself(turn, recent.messages)
        turn.assignment = self._assignment(turn)
        model = resolve_model(
            turn.session, turn.channel, self.settings.default_model, _model_of(turn.assignment)
        )
        if turn.on_text is not None:
            return await self._streamed(turn, cached, recent, model, retried=retried)
        received = datetime.now(UTC)
        started = time.monotonic()
        result, moderated = await self._checked_reply(
            turn, await self._respond(turn, model, context)
        )
        rows = self._rows(turn, recent, received, result, latency_ms=_since(started))
        if moderated is not None:  # the refusal is stored, marked: never the flagged text
            rows = replace(rows, moderated=moderated)
        stored = await self._saved(rows, retried)
        if stored is None:
            return await self._recover_stale(turn)
        taken_over = stored.duplicate and stored.reply_text is None and turn.taken_over
        if taken_over and result is not None:
            return await self._reply_to_stored(turn, stored, result, rows, model)
        if stored.duplicate:
            # The cached context may lack the stored exchange: rebuild it next time.
            refresh = replace(turn.refresh, context_update=ContextUpdate.REPLACE)
            return self._redelivered(turn, stored), refresh
        if result is not None:
            self._count_tokens(result.model_used, rows.user_tokens, rows.reply_tokens)
        reply = ContextMessage("assistant", result.text, rows.reply_ts) if result else None
        refresh = self._appended(turn, recent, cached is not None, rows, reply, rows.reply_id)
        refresh = replace(refresh, quota=QuotaUse(_sum(rows.user_tokens, rows.reply_tokens), {}))
        self.stats[Tally.EXCHANGE] += 1
        if result is None:
            return Reply(RESPONDER_FAILED_TEXT, ReplyKind.FAILED), refresh
        conversation = turn.session.conversation_id
        return Reply(result.text, ReplyKind.ANSWER, conversation, model, rows.reply_id), refresh

    async def _reply_to_stored(
        self,
        turn: Turn,
        stored: StoredExchange,
        result: ResponderResult,
        rows: ExchangeRows,
        model: str,
    ) -> tuple[Reply, Refresh]:
        """Taken over from a handling that stored the user's message alone (a streamed
        reply whose worker died, or that was deferred: a resumed event is answered
        without streaming): this reply (`rows`' reply, moderated as they say) is stored
        as its reply, and sent. (With no reply, it is a duplicate as before: nothing is
        sent twice.)"""
        spent = QuotaUse(_sum(result.completion_tokens), {})
        refresh = replace(turn.refresh, context_update=ContextUpdate.REPLACE, quota=spent)
        self.stats[Tally.EXCHANGE] += 1
        reply_id = await self._store_reply(
            turn, stored, result, result.text, rows.reply_ts, None, rows.latency_ms, rows.moderated
        )
        if reply_id is None:
            return Reply(None, ReplyKind.DUPLICATE), refresh  # another handling answered
        conversation = turn.session.conversation_id
        return Reply(result.text, ReplyKind.ANSWER, conversation, model, reply_id), refresh

    async def _saved(self, rows: ExchangeRows, retried: bool) -> StoredExchange | None:
        """Store the exchange's rows; None when the cached session named a closed or
        deleted conversation (the caller rebuilds it, once: a second time raises)."""
        try:
            return await self.store.conversations.save_exchange(rows)
        except StaleSession:
            if retried:
                raise
            return None

    async def _streamed(
        self,
        turn: Turn,
        cached: RecentContext | None,
        recent: RecentContext,
        model: str,
        *,
        retried: bool,
    ) -> tuple[Reply, Refresh]:
        """The exchange of a streamed reply, in two transactions (docs/streaming.md): the
        user's message is stored before the first piece is shown, so that a worker
        dying mid-stream loses nothing the user wrote; the reply is stored before the
        adapter's final update, so that a reply seen whole is in Postgres. In between,
        the conversation's turn is held in Postgres (bot/store/turn_hold.py)."""
        hold = float(self.settings.lock_ttl_seconds)
        rows = self._rows(turn, recent, datetime.now(UTC), None, hold_seconds=hold)
        stored = await self._saved(rows, retried)
        if stored is None:
            return await self._recover_stale(turn)
        if stored.duplicate and (stored.reply_text is not None or not turn.taken_over):
            refresh = replace(turn.refresh, context_update=ContextUpdate.REPLACE)
            return self._redelivered(turn, stored), refresh
        # Else new, or taken over from a handling that died before storing its reply.
        assert turn.on_text is not None
        conversations, conversation = self.store.conversations, turn.session.conversation_id
        holding = TurnHold(conversations, conversation, stored.user_message_id, hold)
        relay = Relay(turn.on_text, turn.message.channel)
        reply_id, spent = None, 0 if stored.duplicate else _sum(rows.user_tokens)
        try:
            started = time.monotonic()
            result, cut = await self._stream(
                turn, model, _without_itself(turn, recent.messages), relay
            )
            latency = _since(started)
            text = result.text if result is not None else relay.text
            reply_ts = max(datetime.now(UTC), rows.user_ts + timedelta(microseconds=1))
            if text:
                reply_id = await self._store_reply(
                    turn, stored, result, text, reply_ts, cut, latency
                )
                spent += _sum(_reply_tokens(result, text)) if reply_id else 0
        finally:
            await holding.end(reply_stored=reply_id is not None)
        if text and reply_id is None:
            cut = Interruption.OVERTAKEN
        reply = ContextMessage("assistant", text, reply_ts) if reply_id else None
        refresh = self._appended(turn, recent, cached is not None, rows, reply, reply_id)
        if stored.duplicate or (text and reply_id is None):
            # The context read may hold the message already, or lack what overtook it.
            refresh = replace(turn.refresh, context_update=ContextUpdate.REPLACE)
        refresh = replace(refresh, quota=QuotaUse(spent, {}))
        self.stats[Tally.EXCHANGE] += 1
        return self._streamed_reply(turn, text, cut, model, reply_id), refresh

    def _appended(
        self,
        turn: Turn,
        recent: RecentContext,
        cached: bool,
        rows: ExchangeRows,
        reply: ContextMessage | None,
        reply_id: uuid.UUID | None,
    ) -> Refresh:
        """The refresh that adds the exchange to the cached context (newest first), or
        caches the whole context read from Postgres with it; the newest message stored
        is its fence."""
        new = [ContextMessage("user", rows.user_text, rows.user_ts, turn.author)]
        if reply is not None:
            new.insert(0, reply)
        return replace(
            turn.refresh,
            context=new if cached else [*new, *recent.messages],
            context_update=ContextUpdate.APPEND if cached else ContextUpdate.REPLACE,
            last_message_id=reply_id if reply is not None else rows.user_message_id,
            assignment=turn.assignment,
        )

    def _streamed_reply(
        self,
        turn: Turn,
        text: str,
        cut: Interruption | None,
        model: str,
        reply_id: uuid.UUID | None,
    ) -> Reply:
        conversation = turn.session.conversation_id
        if not text:
            return Reply(RESPONDER_FAILED_TEXT, ReplyKind.FAILED)
        if cut is not None:
            self.stats[Tally.INTERRUPTED] += 1
            note = f"{text}\n\n{INTERRUPTED_NOTE}"
            return Reply(note, ReplyKind.INTERRUPTED, conversation, message_id=reply_id)
        self.stats[Tally.STREAMED] += 1
        return Reply(text, ReplyKind.ANSWER, conversation, model, reply_id)

    async def _stream(
        self, turn: Turn, model: str, context: list[ContextMessage], relay: Relay
    ) -> tuple[ResponderResult | None, Interruption | None]:
        """The responder's reply, streamed through `relay`; or, when it broke off after
        some of it was shown (or the worker is stopping), None and why it was cut."""
        request = self._request(turn, model, context)
        responding = asyncio.ensure_future(self.responder.respond(request, on_text=relay))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({responding, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not responding.done():
            responding.cancel()
            await asyncio.gather(responding, return_exceptions=True)
            return None, Interruption.SHUTDOWN
        try:
            return responding.result(), None
        except ResponderError as exc:
            if not relay.text and (deferral := self._deferral(turn, exc)):
                raise deferral from exc
            log.warning("responder %s failed: %s", self.responder.name, exc)
            self.stats[Tally.RESPONDER_ERROR] += 1
            return None, Interruption.RESPONDER if relay.text else None

    async def _store_reply(
        self,
        turn: Turn,
        stored: StoredExchange,
        result: ResponderResult | None,
        text: str,
        reply_ts: datetime,
        cut: Interruption | None,
        latency_ms: int | None,
        moderated: str | None = None,
    ) -> uuid.UUID | None:
        """Store the streamed reply; its id, or None if it could not be stored in order."""
        row = ReplyRow(
            conversation_id=turn.session.conversation_id,
            user_message_id=stored.user_message_id,
            reply_id=uuid.uuid4(),
            channel=turn.message.channel,
            text=text,
            ts=reply_ts,
            tokens=_reply_tokens(result, text),
            model_used=result.model_used if result else None,
            interrupted=cut,
            assignment=turn.assignment,
            latency_ms=latency_ms,
            moderated=moderated,
        )
        if await self.store.conversations.save_reply(row):
            prompt = result.prompt_tokens if result else None  # None: the stream broke off
            self._count_tokens(row.model_used or "unknown", prompt, row.tokens)
            return row.reply_id
        # This worker stalled past its hold and another handling stored a message of
        # the conversation (or this event's reply) first: the reply would come after
        # it, so it is not stored, and it is shown cut off.
        log.warning(
            "%s: the reply to event %s was overtaken by another handling; not stored",
            row.channel,
            turn.message.platform_message_id,
        )
        return None

    def _count_tokens(self, model: str, prompt: int | None, completion: int | None) -> None:
        """Count a stored reply's tokens (read by /metrics at each scrape)."""
        self.tokens[model, "prompt"] += prompt or 0
        self.tokens[model, "completion"] += completion or 0

    def _redelivered(self, turn: Turn, stored: StoredExchange) -> Reply:
        """A platform event Postgres holds already. If Redis says its earlier handling
        never finished (the worker died after the commit, or the user was told it failed
        while the commit went through), send the reply stored then. Otherwise it was
        answered (or nobody can tell): say nothing, as for any duplicate."""
        self.stats[Tally.DUPLICATE] += 1
        if not turn.taken_over or stored.reply_text is None:
            return Reply(None, ReplyKind.DUPLICATE)
        self.stats[Tally.REPLY_RESENT] += 1
        conversation, model = turn.session.conversation_id, stored.reply_model
        return Reply(stored.reply_text, ReplyKind.ANSWER, conversation, model, stored.reply_id)

    async def _recover_stale(self, turn: Turn) -> tuple[Reply, Refresh]:
        """The cached session pointed at a closed or deleted conversation: rebuild it."""
        self.stats[Tally.STALE_SESSION] += 1
        message = turn.message
        session = await self._load_session(message, turn.shared)
        refresh = replace(turn.refresh, session=session)
        turn = replace(turn, session=session, refresh=refresh, loaded_context=None)
        return await self._exchange(turn, None, retried=True)

    def _request(self, turn: Turn, model: str, context: list[ContextMessage]) -> ResponderRequest:
        return ResponderRequest(
            model=model,
            text=turn.message.text,
            author=turn.author,
            context=list(reversed(context)),
            channel=turn.message.channel,
            channel_settings=turn.channel.settings,
        )

    async def _respond(
        self, turn: Turn, model: str, context: list[ContextMessage]
    ) -> ResponderResult | None:
        request = self._request(turn, model, context)
        try:
            return await self.responder.respond(request)
        except ResponderError as exc:
            if deferral := self._deferral(turn, exc):
                raise deferral from exc
            log.warning("responder %s failed: %s", self.responder.name, exc)
            self.stats[Tally.RESPONDER_ERROR] += 1
            return None

    def _rows(
        self,
        turn: Turn,
        recent: RecentContext,
        user_ts: datetime,
        result: ResponderResult | None,
        hold_seconds: float | None = None,
        latency_ms: int | None = None,
    ) -> ExchangeRows:
        # After the context's newest message, whatever this worker's clock says, and the
        # reply after the user's message: the stored order is the order of the turns.
        if recent.messages:
            user_ts = max(user_ts, recent.messages[0].timestamp + timedelta(milliseconds=1))
        reply_ts = max(datetime.now(UTC), user_ts + timedelta(microseconds=1))
        return ExchangeRows(
            conversation_id=turn.session.conversation_id,
            channel=turn.message.channel,
            platform_message_id=turn.message.platform_message_id,
            user_text=turn.message.text,
            user_ts=user_ts,
            user_tokens=result.prompt_tokens if result else estimate_tokens(turn.message.text),
            reply_text=result.text if result else None,
            reply_ts=reply_ts,
            reply_tokens=result.completion_tokens if result else None,
            model_used=result.model_used if result else None,
            user_message_id=uuid.uuid4(),
            author_id=turn.session.user_id if turn.shared else None,
            reply_id=uuid.uuid4(),
            seen=recent.last_id,
            hold_seconds=hold_seconds,
            session_model=turn.session.model,
            assignment=turn.assignment,
            latency_ms=latency_ms if result else None,
        )

    def allow_admins(self, channel: str, check: AdminCheck) -> None:
        """How a platform says who may configure a chat (its adapter asks the platform)."""
        self._admin_checks[channel] = check

    async def _may_configure(self, message: IncomingMessage) -> Permission:
        """Whether the writer may change this group's or thread's settings: the platform
        must say so. An answer that cannot be had, or makes no sense, refuses."""
        check = self._admin_checks.get(message.channel)
        if message.scope.private or check is None:
            return Permission.DENIED
        try:
            async with asyncio.timeout(ADMIN_CHECK_SECONDS):  # the turn's lock is held
                allowed = await check(message)
        except Exception as exc:  # noqa: BLE001 - whatever the platform did: refuse, say why
            log.warning(
                "cannot tell whether %s:%s may configure chat %s (%s: %s); refused",
                message.channel, message.channel_user_id, message.chat_id,
                type(exc).__name__, exc,
            )  # fmt: skip
            return Permission.UNKNOWN
        if not isinstance(allowed, bool):
            log.warning(
                "the %s answer about %s:%s in chat %s was no yes or no; refused",
                message.channel, message.channel, message.channel_user_id, message.chat_id,
            )  # fmt: skip
            return Permission.UNKNOWN
        return Permission.GRANTED if allowed else Permission.DENIED

    async def _start_turn(self, message: IncomingMessage, shared: bool) -> TurnStart | None:
        conversations, limit = self.store.conversations, self.settings.context_messages
        user, scope, name = message.channel_user_id, message.scope.key, message.username
        return await conversations.start_turn(message.channel, user, name, scope, shared, limit)

    async def _load_session(self, message: IncomingMessage, shared: bool) -> SessionState:
        """The writer's session in the message's scope (its shared one), from Postgres."""
        conversations = self.store.conversations
        user, scope, name = message.channel_user_id, message.scope.key, message.username
        return await conversations.load_session(message.channel, user, name, scope, shared)

    def _count(self, read: CacheRead, hit: bool) -> None:
        self.stats[read.tally(hit)] += 1

    def _assignment(self, turn: Turn) -> Assignment | None:
        """The writer's variant of the experiment running for the channel, unless the
        conversation's own model override decides (model resolution: bot/domain.py)."""
        if turn.session.pinned and turn.session.model:
            return None
        return self.experiments.current.assign(turn.message.channel, turn.session.user_id)


def _model_of(assignment: Assignment | None) -> str | None:
    return assignment.model if assignment is not None else None


def _since(started: float) -> int:
    """Milliseconds since `started` (time.monotonic())."""
    return round((time.monotonic() - started) * 1000)


def _reply_tokens(result: ResponderResult | None, text: str) -> int | None:
    """The tokens stored with a reply: the responder's count, else an estimate."""
    return result.completion_tokens if result else estimate_tokens(text)


def _sum(*tokens: int | None) -> int:
    """Tokens stored with messages (None: not counted), as the quotas count them."""
    return sum(n for n in tokens if n)


def _without_itself(turn: Turn, context: list[ContextMessage]) -> list[ContextMessage]:
    """The context a message is answered with. A message taken over from an earlier
    handling that stored it (and no reply) may find itself newest in the context read
    since: it is asked once, as the message, not also as context."""
    newest = context[0] if context else None
    if (
        turn.taken_over
        and newest is not None
        and newest.role == "user"
        and newest.content == turn.message.text
    ):
        return context[1:]
    return context
