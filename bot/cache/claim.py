"""A message's turn: its user's lock and its event's claim, from BEGIN to FINISH.

    async with cache.claim(message) as claim:
        if claim.duplicate: ...        # answered before: say nothing
        ... claim.hot ...              # what BEGIN read; None while Redis is out
        claim.settle_with(refresh)     # what FINISH is to write back

Entering waits for the user's turn: first in this process (one FIFO lock per user,
which also orders messages while Redis is out), then in Redis, polling the lock (and a
reply another worker is still sending) up to LOCK_WAIT_SECONDS, else LockTimeout.
While the body works the Redis lock is renewed. Leaving with `settle_with` called
runs FINISH; leaving with an error releases the lock and marks the event unfinished
(a commit may have gone through: bot/cache/events.py); leaving without either
releases the lock and forgets the event. Whatever a failed Redis call may have left
(a lock, a claim, keys older than Postgres) is put right by bot/cache/repair.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from bot.cache import scripts
from bot.cache.beside import Beside
from bot.cache.codec import (
    Fence,
    decode_cached_context,
    decode_channel,
    decode_session,
    encode_author,
    encode_channel,
    encode_context,
    encode_session,
    text_of,
)
from bot.cache.delivery import DeliveredEvents
from bot.cache.events import EventState
from bot.cache.guard import RedisGuard
from bot.cache.keys import QUOTA_GRACE_SECONDS, RATE_WINDOW_SECONDS, Keys
from bot.cache.lua import ScriptPipelines
from bot.cache.repair import CacheRepair, Claim
from bot.cache.state import BeginStatus, ContextUpdate, HotState, QuotaUse, RateCount, Refresh
from bot.domain import ContextMessage, IncomingMessage, SessionState
from bot.errors import CacheUnavailable, CircuitOpen, LockTimeout
from bot.local import Backoff, KeyedLocks, Renewal
from bot.quotas import Counter, Spent, counters_of

log = logging.getLogger(__name__)

DELIVERY_MARK_DELAY = 0.05  # s a delivered event waits for a FINISH to carry its mark
_WAITING = (BeginStatus.LOCKED, BeginStatus.DELIVERING)


@dataclass(frozen=True, slots=True)
class TurnKeys:
    """The keys of one message's turn."""

    lock: str  # the writer's lock, or (shared) the conversation's
    session: str  # the conversation's session
    author: str  # the writer's own session: the same as `session` unless shared
    context: str  # the session's context key, or its template (Keys.context_for)
    shared: bool


def turn_keys(keys: Keys, message: IncomingMessage, shared: bool = False) -> TurnKeys:
    """The keys of the message's turn: its user's, or (`shared`) its conversation's."""
    channel, user, scope = message.channel, message.channel_user_id, message.scope.key
    if not shared:
        own = keys.session(channel, user, scope)
        lock = keys.lock(channel, user, scope)
        return TurnKeys(lock, own, own, keys.context_for(own), shared=False)
    session = keys.shared_session(channel, scope)
    author = keys.author(channel, user, scope)  # who they are (their id)
    lock = keys.scope_lock(channel, scope)
    return TurnKeys(lock, session, author, keys.context_for(session), shared=True)


def event_key(keys: Keys, message: IncomingMessage) -> str:
    """The key of the message's platform event: its claim (bot/cache/events.py)."""
    event = message.platform_message_id or "-"
    return keys.dedup(message.channel, event, message.channel_user_id, message.scope.key)


class Claims:
    """The turns of every user of one worker: the scripts that take and give them back,
    and the bookkeeping of the failures in between."""

    def __init__(self, redis: Redis, keys: Keys, guard: RedisGuard, lock_wait: float) -> None:
        self.redis = redis
        self.keys = keys
        self.guard = guard
        self.lock_wait = lock_wait
        self.local = KeyedLocks()
        self.repair = CacheRepair(max(keys.lock_ttl, keys.dedup_processing_ttl))
        self.delivered = DeliveredEvents(self._mark_done, DELIVERY_MARK_DELAY)
        self._begin = scripts.BEGIN.bind(redis)
        self._finish = scripts.FINISH.bind(redis)
        self._abort = scripts.ABORT.bind(redis)
        self._extend = scripts.EXTEND.bind(redis)
        self.rate = scripts.RATE.bind(redis)  # BEGIN's count, when it could not count
        active, quota = scripts.ACTIVE.bind(redis), scripts.QUOTA.bind(redis)
        self.beside = Beside(keys, self.rate, active, quota)  # on a cluster
        used = (self._begin, self._finish, self._abort, self.rate, active, quota)
        self.pipelines = ScriptPipelines(redis, used)
        guard.on_recovery(lambda: self.repair.recover(self._forget_unguarded))

    def claim(
        self, message: IncomingMessage, shared: bool = False, now: datetime | None = None
    ) -> MessageClaim:
        return MessageClaim(self, message, shared, now or datetime.now(UTC))

    def turn_keys(self, message: IncomingMessage, shared: bool = False) -> TurnKeys:
        return turn_keys(self.keys, message, shared)

    def event_key(self, message: IncomingMessage) -> str:
        return event_key(self.keys, message)

    def quota_keys(self, message: IncomingMessage, now: datetime) -> QuotaKeys:
        """The message's quota counters (bot/quotas.py) in the periods of `now`."""
        counters = counters_of(message)
        return QuotaKeys(
            {c: self.keys.quota(c, message, now) for c in counters},
            {c: int(c.period.end(now).timestamp()) + QUOTA_GRACE_SECONDS for c in counters},
        )

    # --- BEGIN: waiting for the turn ----------------------------------------------------

    async def wait_for_turn(
        self, message: IncomingMessage, token: str, shared: bool, quota: QuotaKeys
    ) -> HotState | None:
        """Hot state from Redis, once the turn's lock is ours; None if Redis is out."""
        backoff = Backoff(self.lock_wait)
        first: HotState | None = None  # on a cluster, it carries what was read beside
        while True:
            hot = await self._try_begin(message, token, shared, quota, beside=first is None)
            if hot is None or hot.status not in _WAITING:
                if hot is not None and first is not None and self.keys.cluster:
                    hot = replace(hot, rate=first.rate, channel=first.channel, spent=first.spent)
                return hot
            first = first or hot
            if not await backoff.pause():
                raise LockTimeout(f"{message.channel}:{message.channel_user_id}")

    async def _try_begin(
        self, message: IncomingMessage, token: str, shared: bool, quota: QuotaKeys, beside: bool
    ) -> HotState | None:
        try:
            return await self.begin(message, token, shared, beside, quota)
        except CircuitOpen:
            return None
        except CacheUnavailable:
            # Timed out or failed half-way: the script may have taken the lock.
            self.repair.remember_claim(self._abort_args(message, token, shared))
            return None

    async def begin(
        self,
        message: IncomingMessage,
        token: str,
        shared: bool = False,
        beside: bool = True,
        quota: QuotaKeys | None = None,
    ) -> HotState:
        """One try: take the lock, claim the event, count the rate, read all hot state
        (on a cluster, the platform's keys, the rate and the quota counters `beside`
        the script)."""
        counters = (quota or self.quota_keys(message, datetime.now(UTC))).counters
        has_event = message.platform_message_id is not None
        if has_event and self.event_key(message) in self.delivered:
            return HotState(BeginStatus.DUPLICATE)  # answered here, not marked done yet
        keys, turn, cluster = self.keys, self.turn_keys(message, shared), self.keys.cluster
        call = scripts.Begin(
            lock_key=turn.lock,
            event_key=self.event_key(message),
            session_key=turn.session,
            author_key=turn.author,
            context_key=turn.context,
            channel_config_key=None if cluster else keys.channel_config(message.channel),
            active_key=None if cluster else keys.active(message.channel),
            token=token,
            lock_ttl_ms=keys.lock_ttl * 1000,
            has_event=has_event,
            processing_ttl=keys.dedup_processing_ttl,
            rate_key_template=keys.rate_template(),
            rate_window=RATE_WINDOW_SECONDS,
            now=time.time(),
            active_window=keys.active_window,
            active_member=message.channel_user_id,
            context_length=keys.context_messages,
            delivery_lease=keys.delivery_lease,
            quota_counters=() if cluster else tuple(counters.values()),
        )
        if not cluster:
            result = await self.guard.run(lambda: self._begin(call))
            return _parse_begin(result, shared, tuple(counters))

        async def fill(pipe: Pipeline) -> None:
            await self._begin(call, pipe)
            if beside:
                await self.beside.before_begin(pipe, message, tuple(counters.values()))

        results = await self.guard.run(lambda: self.pipelines.run(fill))
        hot = _parse_begin(results[0], shared, ())
        if not beside:
            return hot
        reads = Beside.read(results[1:], tuple(counters))
        return replace(hot, rate=reads.rate, channel=reads.channel, spent=reads.spent)

    # --- while the body works: the lock renewed -----------------------------------------

    async def extend_lock(self, message: IncomingMessage, token: str, shared: bool = False) -> bool:
        """Renew the turn's lock for another TTL; False if it is no longer ours."""
        call = scripts.Extend(
            lock_key=self.turn_keys(message, shared).lock,
            token=token,
            lock_ttl_ms=self.keys.lock_ttl * 1000,
        )
        return bool(await self.guard.run(lambda: self._extend(call)))

    # --- the end of the turn: FINISH or ABORT -------------------------------------------

    async def settle(
        self,
        message: IncomingMessage,
        token: str,
        refresh: Refresh,
        *,
        was_read: bool,
        shared: bool = False,
        quota: QuotaKeys | None = None,
    ) -> None:
        """After the Postgres commit: refresh Redis, or drop what may now be stale."""
        stale = self._stale_keys(message, refresh.session, shared)
        if not was_read:
            # Redis failed when we read: what it holds may predate Postgres now.
            await self.repair.drop(stale, token, self._forget)
            return
        try:
            quota = quota or self.quota_keys(message, datetime.now(UTC))
            await self._finish_call(message, token, refresh, shared, quota)
        except CacheUnavailable:
            # FINISH may have stopped half-way: keys written before the commit may stay,
            # and the lock may still be taken.
            self.repair.remember_claim(self._abort_args(message, token, shared))
            await self.repair.drop(stale, token, self._forget)

    async def release(
        self,
        message: IncomingMessage,
        token: str,
        *,
        was_read: bool,
        unfinished: bool,
        shared: bool = False,
    ) -> None:
        """Nothing was stored (or, if `unfinished`, nothing may have been): release the
        lock and the event's claim, now or later."""
        if not was_read:
            await self.repair.drop([], token, self._forget)
            return
        call = self._abort_args(message, token, shared, unfinished)
        try:
            await self.guard.run(lambda: self._abort(call))
        except CacheUnavailable:
            self.repair.remember_claim(self._abort_args(message, token, shared))

    async def _finish_call(
        self, message: IncomingMessage, token: str, refresh: Refresh, shared: bool, quota: QuotaKeys
    ) -> None:
        keys, turn, cluster = self.keys, self.turn_keys(message, shared), self.keys.cluster
        session = refresh.session
        conversation = session.conversation_id if session else uuid.UUID(int=0)
        author = encode_author(session) if shared and session else None
        config = encode_channel(refresh.channel) if refresh.channel else None
        delivered = tuple(self.delivered.take())
        counts = _quota_counts(quota, refresh.quota)
        assignment = refresh.assignment
        ab_test = keys.ab_test(assignment.experiment) if assignment else None
        call = scripts.Finish(
            session_key=turn.session,
            author_key=turn.author,
            context_key=keys.context_of(turn.session, conversation),
            lock_key=turn.lock,
            event_key=self.event_key(message),
            channel_config_key=None if cluster else keys.channel_config(message.channel),
            ab_test_key=None if cluster else ab_test,
            token=token,
            session_ttl=keys.session_ttl,
            context_ttl=keys.context_ttl,
            context_length=keys.context_messages,
            context_update=refresh.context_update if session else ContextUpdate.KEEP,
            has_event=message.platform_message_id is not None,
            event_ttl=keys.dedup_ttl,
            channel_config=None if cluster else config,
            channel_config_ttl=keys.channel_config_ttl,
            session=encode_session(
                session, shared=shared, fence=_fence(refresh), summary=_summary(refresh)
            )
            if session
            else None,
            author=author,
            ab_test_field=keys.ab_test_field(assignment.user_id) if assignment else "",
            variant=assignment.variant if assignment else "",
            now=time.time(),
            quota_tokens=refresh.quota.tokens if refresh.quota else 0,
            quota=() if cluster else tuple(str(item) for count in counts for item in count),
            delivered=() if cluster else delivered,
            context=tuple(encode_context(m) for m in refresh.context if not m.is_summary),
        )
        if not cluster:
            await self.guard.run(lambda: self._finish(call))
            return

        async def fill(pipe: Pipeline) -> None:
            await self._finish(call, pipe)
            self.beside.after_finish(pipe, message.channel, config, delivered, assignment)
            await self.beside.count_quota(pipe, counts, call.quota_tokens)

        await self.guard.run(lambda: self.pipelines.run(fill))

    def _abort_args(
        self, message: IncomingMessage, token: str, shared: bool, unfinished: bool = False
    ) -> scripts.Abort:
        return scripts.Abort(
            lock_key=self.turn_keys(message, shared).lock,
            event_key=self.event_key(message),
            token=token,
            has_event=message.platform_message_id is not None,
            unfinished_ttl=self.keys.dedup_ttl if unfinished else None,
        )

    def _stale_keys(
        self, message: IncomingMessage, session: SessionState | None, shared: bool
    ) -> list[str]:
        turn = self.turn_keys(message, shared)
        names = [turn.session]
        if session is not None:
            names.append(self.keys.context_of(turn.session, session.conversation_id))
        return names

    # --- repair and delivery marks ------------------------------------------------------

    async def _forget(self, names: list[str], held: list[Claim]) -> None:
        """Delete keys whose content may no longer match Postgres, and give up `held`:
        turns whose script failed without telling how far it got."""
        await self.guard.run(lambda: self._forget_unguarded(names, held))

    async def _forget_unguarded(self, names: list[str], held: list[Claim]) -> None:
        async def fill(pipe: Pipeline) -> None:
            if names:
                pipe.delete(*names)
            for claim in held:
                await self._abort(claim, pipe)

        await self.pipelines.run(fill)

    async def _mark_done(self, event_keys: list[str]) -> None:
        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in event_keys:
                    pipe.set(key, EventState.DONE.value, xx=True, ex=self.keys.dedup_ttl)
                await pipe.execute()

        await self.guard.run(write)


class MessageClaim:
    """One message's turn (see the module docstring)."""

    def __init__(
        self, claims: Claims, message: IncomingMessage, shared: bool, now: datetime
    ) -> None:
        self.quota = claims.quota_keys(message, now)  # read by BEGIN, counted by FINISH
        self.message = message
        self.shared = shared  # the turn of a shared conversation, not of its writer
        self.now = now  # the quota counters' periods are those of this time
        self.hot: HotState | None = None  # None: Redis could not be used
        self._claims = claims
        self._token = uuid.uuid4().hex
        self._refresh: Refresh | None = None
        self._local = claims.local.hold(claims.turn_keys(message, shared).lock)
        self._renewal: LockRenewal | None = None

    @property
    def duplicate(self) -> bool:
        """The event was answered before: there is nothing to do, and nothing to release."""
        return self.hot is not None and self.hot.status is BeginStatus.DUPLICATE

    def settle_with(self, refresh: Refresh) -> None:
        """The exchange is stored: at the end of the turn, write `refresh` back."""
        self._refresh = refresh

    async def __aenter__(self) -> MessageClaim:
        await self._local.__aenter__()
        try:
            claims, message, shared = self._claims, self.message, self.shared
            self.hot = await claims.wait_for_turn(message, self._token, shared, self.quota)
        except BaseException as exc:
            await self._local.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if self.hot is not None and not self.duplicate:
            self._renewal = LockRenewal(self._claims, self.message, self._token, self.shared)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._renewal is not None:
                await self._renewal.stop()
            if not self.duplicate:
                await self._end(failed=exc is not None)
        finally:
            await self._local.__aexit__(exc_type, exc, traceback)

    async def _end(self, *, failed: bool) -> None:
        was_read = self.hot is not None
        claims, message, token, shared = self._claims, self.message, self._token, self.shared
        if self._refresh is not None and not failed:
            refresh, quota = self._refresh, self.quota
            await claims.settle(
                message, token, refresh, was_read=was_read, shared=shared, quota=quota
            )
        else:
            await claims.release(
                message, token, was_read=was_read, unfinished=failed, shared=shared
            )


class LockRenewal:
    """Renews the user's lock every third of its TTL while the body works.

    A slow reply keeps the lock however long it takes, while the lock of a worker that
    crashed frees within the TTL.
    """

    def __init__(self, claims: Claims, message: IncomingMessage, token: str, shared: bool) -> None:
        self._claims = claims
        self._message = message
        self._token = token
        self._shared = shared
        self._renewal = Renewal(self._renew, claims.keys.lock_ttl / 3)

    async def stop(self) -> None:
        if (error := await self._renewal.stop()) is not None:
            log.error("renewing a user's lock failed", exc_info=error)

    async def _renew(self) -> bool:
        message = self._message
        try:
            if await self._claims.extend_lock(message, self._token, self._shared):
                return True
        except CacheUnavailable:
            return True  # Redis is away; the next renewal may still come in time
        log.warning(
            "the lock of %s:%s expired while its message was handled; another worker "
            "may take the user's next message meanwhile (Postgres keeps them in order)",
            message.channel,
            message.channel_user_id,
        )
        return False


def _parse_begin(result: list[Any], shared: bool, counters: tuple[Counter, ...]) -> HotState:
    status = BeginStatus(text_of(result[0]))
    if status is not BeginStatus.OK:
        return HotState(status)
    _, flat, config, count, ttl, context, taken_over, author, spent = result
    # A shared session names the conversation; who writes is their own session's user.
    session = decode_session([*flat, b"user_id", author] if shared and author else flat)
    return HotState(
        status=status,
        session=session,
        channel=decode_channel(config) if config else None,
        rate=RateCount(int(count), int(ttl)) if int(count) > 0 else None,
        context=decode_cached_context(flat, context) if context else None,
        taken_over=bool(taken_over),
        spent=Spent.read(counters, spent) if counters else None,
    )


def _summary(refresh: Refresh) -> ContextMessage | Fence | None:
    """The summary to write with the session: the context's, whenever the list is
    replaced (an appended list keeps its own)."""
    if refresh.context_update is not ContextUpdate.REPLACE:
        return Fence.KEEP
    return next((m for m in refresh.context if m.is_summary), None)


def _quota_counts(quota: QuotaKeys, use: QuotaUse | None) -> list[tuple[str, str, int]]:
    """(counter key, count rebuilt or '', expiry) of the counters the exchange counts on:
    all the message's when it spent tokens (a counter Redis does not hold, and nobody
    rebuilt, is not created), none otherwise."""
    if use is None or (not use.tokens and not use.rebuilt):
        return []
    counts = []
    for counter, key in quota.counters.items():
        base = use.rebuilt.get(counter)
        rebuilt = "" if base is None else str(base)
        counts.append((key, rebuilt, quota.expire_at[counter]))
    return counts


@dataclass(frozen=True, slots=True)
class QuotaKeys:
    """A turn's quota counters (bot/quotas.py): their keys, and when each expires."""

    counters: dict[Counter, str]
    expire_at: dict[Counter, int]  # unix time: a day after its period ends


def _fence(refresh: Refresh) -> uuid.UUID | Fence | None:
    """The fence to write with the session: the context list's, whenever it is written."""
    if refresh.context_update is ContextUpdate.KEEP:
        return Fence.KEEP
    return refresh.last_message_id
