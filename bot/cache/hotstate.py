"""The conversation service's view of Redis: read hot state, refresh it, forget it.

Every call goes through the RedisGuard, so a slow or dead Redis costs at most the
operation budget and then nothing until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from bot.cache import scripts
from bot.cache.codec import (
    decode_channel,
    decode_contexts,
    decode_session,
    encode_channel,
    encode_context,
    encode_session,
    text_of,
)
from bot.cache.delivery import DeliveredEvents
from bot.cache.guard import RedisGuard
from bot.cache.keys import RATE_WINDOW_SECONDS, Keys
from bot.cache.repair import CacheRepair, Claim
from bot.domain import ChannelSettings, ContextMessage, IncomingMessage, SessionState
from bot.errors import CacheUnavailable, CircuitOpen

log = logging.getLogger(__name__)

DELIVERY_MARK_DELAY = 0.05  # s a delivered event waits for a FINISH to carry its mark


class BeginStatus(StrEnum):
    OK = "ok"
    LOCKED = "locked"  # another worker handles this user's previous message
    DUPLICATE = "duplicate"  # this platform event was handled already
    DELIVERING = "delivering"  # its reply is being sent by another worker: wait


@dataclass(frozen=True, slots=True)
class RateCount:
    count: int
    retry_after: int  # seconds until the window resets


@dataclass(frozen=True, slots=True)
class HotState:
    """What one round trip read; None marks a miss to fill from Postgres."""

    status: BeginStatus
    session: SessionState | None = None
    channel: ChannelSettings | None = None
    rate: RateCount | None = None
    context: list[ContextMessage] | None = None
    taken_over: bool = False  # an earlier handling of this event never finished


@dataclass(frozen=True, slots=True)
class Refresh:
    """What to write back after the Postgres commit."""

    session: SessionState | None
    context: Sequence[ContextMessage] = ()
    context_mode: str = "keep"  # 'replace' the whole list, 'append' new ones, or 'keep'
    channel: ChannelSettings | None = None  # set when it was loaded from Postgres


class HotStateCache:
    def __init__(self, redis: Redis, keys: Keys, guard: RedisGuard) -> None:
        self.redis = redis
        self.keys = keys
        self.guard = guard
        self.repair = CacheRepair(max(keys.lock_ttl, keys.dedup_processing_ttl))
        guard.on_recovery(lambda: self.repair.recover(self._forget_unguarded))
        self._begin = redis.register_script(scripts.BEGIN)
        self._rate = redis.register_script(scripts.RATE)
        self._finish = redis.register_script(scripts.FINISH)
        self._abort = redis.register_script(scripts.ABORT)
        self._extend = redis.register_script(scripts.EXTEND)
        self.delivered = DeliveredEvents(self._mark_done, DELIVERY_MARK_DELAY)

    def mark_delivered(self, message: IncomingMessage) -> None:
        """The adapter delivered the reply to this event: it is to be marked done."""
        if message.platform_message_id is not None:
            self.delivered.add(self._dedup_key(message))

    async def flush_delivered(self) -> None:
        """Mark every delivered event done now (at shutdown)."""
        await self.delivered.flush()

    async def _mark_done(self, dedup_keys: list[str]) -> None:
        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in dedup_keys:
                    pipe.set(key, "done", xx=True, ex=self.keys.dedup_ttl)
                await pipe.execute()

        await self.guard.run(write)

    async def begin(self, message: IncomingMessage, lock_token: str) -> HotState:
        """Take the user's lock, claim the event, count the rate, read all hot state."""
        if message.platform_message_id is not None and self._dedup_key(message) in self.delivered:
            return HotState(BeginStatus.DUPLICATE)  # answered here, not marked done yet
        keys = self.keys
        key_list = [
            keys.lock(message.channel, message.channel_user_id),
            self._dedup_key(message),
            keys.session(message.channel, message.channel_user_id),
            keys.channel_config(message.channel),
            keys.active(message.channel),
        ]
        args: list[Any] = [
            lock_token,
            keys.lock_ttl * 1000,
            _flag(message.platform_message_id is not None),
            keys.dedup_processing_ttl,
            keys.rate_template(),
            RATE_WINDOW_SECONDS,
            f"{time.time():.3f}",
            keys.active_window,
            message.channel_user_id,
            keys.context_template(),
            keys.context_messages,
            keys.delivery_lease,
        ]
        result = await self.guard.run(lambda: self._begin(keys=key_list, args=args))
        return _parse_begin(result)

    async def try_begin(self, message: IncomingMessage, lock_token: str) -> HotState | None:
        """`begin`, or None when Redis cannot be used (the caller falls back to Postgres)."""
        try:
            return await self.begin(message, lock_token)
        except CircuitOpen:
            return None
        except CacheUnavailable:
            # Timed out or failed half-way: the script may have taken the lock.
            self.repair.remember_claim(message, lock_token)
            return None

    @asynccontextmanager
    async def keep_lock(self, message: IncomingMessage, lock_token: str) -> AsyncIterator[None]:
        """Renew the user's lock every third of its TTL while the body works.

        A slow reply keeps the lock however long it takes, while the lock of a worker
        that crashed frees within the TTL. Most messages are done long before the first
        renewal is due: for them this costs one timer, no task.
        """
        renewal: asyncio.Task[None] | None = None

        def start_renewing() -> None:
            nonlocal renewal
            renewal = asyncio.create_task(self._renew_lock(message, lock_token))

        loop = asyncio.get_running_loop()
        due = loop.call_later(self.keys.lock_ttl / 3, start_renewing)
        try:
            yield
        finally:
            due.cancel()
            if renewal is not None:
                await _stop_renewing(renewal)

    async def extend_lock(self, message: IncomingMessage, lock_token: str) -> bool:
        """Renew the user's lock for another TTL; False if it is no longer ours."""
        key = self.keys.lock(message.channel, message.channel_user_id)
        renewed = await self.guard.run(
            lambda: self._extend(keys=[key], args=[lock_token, self.keys.lock_ttl * 1000])
        )
        return bool(renewed)

    async def _renew_lock(self, message: IncomingMessage, lock_token: str) -> None:
        while True:
            try:
                renewed = await self.extend_lock(message, lock_token)
            except CacheUnavailable:
                renewed = True  # Redis is away; the next renewal may still come in time
            if renewed:
                await asyncio.sleep(self.keys.lock_ttl / 3)
                continue
            log.warning(
                "the lock of %s:%s expired while its message was handled; another worker "
                "may take the user's next message meanwhile",
                message.channel,
                message.channel_user_id,
            )
            return

    async def settle(
        self, message: IncomingMessage, lock_token: str, refresh: Refresh, *, was_read: bool
    ) -> None:
        """After the Postgres commit: refresh Redis, or drop what may now be stale."""
        stale = self.stale_keys(message, refresh.session)
        if not was_read:
            # Redis failed when we read: what it holds may predate Postgres now.
            await self.repair.drop(stale, lock_token, self.forget)
            return
        try:
            await self.finish(message, lock_token, refresh)
        except CacheUnavailable:
            # FINISH may have stopped half-way: keys written before the commit may stay,
            # and the lock may still be taken.
            self.repair.remember_claim(message, lock_token)
            await self.repair.drop(stale, lock_token, self.forget)

    async def release(
        self, message: IncomingMessage, lock_token: str, *, was_read: bool, unfinished: bool
    ) -> None:
        """Nothing was stored (or, if `unfinished`, nothing may have been): release the
        lock and the event's claim, now or later."""
        if not was_read:
            await self.repair.drop([], lock_token, self.forget)
            return
        try:
            await self.abort(message, lock_token, unfinished=unfinished)
        except CacheUnavailable:
            self.repair.remember_claim(message, lock_token)

    async def add_stats(self, delta: Mapping[str, int]) -> None:
        """Add a worker's tallies to the deployment-wide counters (for `bot ops stats`)."""

        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for field, count in delta.items():
                    pipe.hincrby(self.keys.stats(), field, count)
                await pipe.execute()

        await self.guard.run(write)

    async def count_rate(self, user_id: uuid.UUID) -> RateCount:
        count, ttl = await self.guard.run(
            lambda: self._rate(keys=[self.keys.rate(user_id)], args=[RATE_WINDOW_SECONDS])
        )
        return RateCount(int(count), int(ttl))

    async def finish(self, message: IncomingMessage, lock_token: str, refresh: Refresh) -> None:
        """Write back session, context and config, mark the event answered (and the ones
        delivered since the last call done), release the lock."""
        keys = self.keys
        session = refresh.session
        delivered = self.delivered.take()
        key_list = [
            keys.session(message.channel, message.channel_user_id),
            keys.context(session.conversation_id) if session else keys.context(uuid.UUID(int=0)),
            keys.lock(message.channel, message.channel_user_id),
            self._dedup_key(message),
            keys.channel_config(message.channel),
        ]
        args: list[Any] = [
            lock_token,
            keys.session_ttl,
            keys.context_ttl,
            keys.context_messages,
            refresh.context_mode if session else "keep",
            _flag(message.platform_message_id is not None),
            keys.dedup_ttl,
            encode_channel(refresh.channel) if refresh.channel else "",
            keys.channel_config_ttl,
            encode_session(session) if session else "",
            f"{time.time():.3f}",
            len(delivered),
            *delivered,
            *(encode_context(m) for m in refresh.context),
        ]
        await self.guard.run(lambda: self._finish(keys=key_list, args=args))

    async def abort(
        self, message: IncomingMessage, lock_token: str, *, unfinished: bool = False
    ) -> None:
        """Release the lock and forget the event (or mark it unfinished) so that a
        redelivery is handled."""
        key_list, args = self._abort_call(message, lock_token, unfinished)
        await self.guard.run(lambda: self._abort(keys=key_list, args=args))

    async def forget(self, keys: list[str], held: list[Claim]) -> None:
        """Delete keys whose content may no longer match Postgres, and give up `held`:
        (message, lock token) pairs whose script failed without telling how far it got."""
        await self.guard.run(lambda: self._forget_unguarded(keys, held))

    async def _forget_unguarded(self, names: list[str], claims: list[Claim]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            if names:
                pipe.delete(*names)
            for message, lock_token in claims:
                key_list, args = self._abort_call(message, lock_token)
                await self._abort(keys=key_list, args=args, client=pipe)
            await pipe.execute()

    def stale_keys(self, message: IncomingMessage, session: SessionState | None) -> list[str]:
        names = [self.keys.session(message.channel, message.channel_user_id)]
        if session is not None:
            names.append(self.keys.context(session.conversation_id))
        return names

    async def flush(self) -> int:
        """Delete every key under this deployment's prefix; returns how many."""
        deleted = 0
        async for batch in _scan_batches(self.redis, self.keys.all_pattern()):
            deleted += await self.redis.delete(*batch)
        return deleted

    def _abort_call(
        self, message: IncomingMessage, lock_token: str, unfinished: bool = False
    ) -> tuple[list[str], list[Any]]:
        key_list = [
            self.keys.lock(message.channel, message.channel_user_id),
            self._dedup_key(message),
        ]
        mark = self.keys.dedup_ttl if unfinished else ""
        return key_list, [lock_token, _flag(message.platform_message_id is not None), mark]

    def _dedup_key(self, message: IncomingMessage) -> str:
        event = message.platform_message_id or "-"
        return self.keys.dedup(message.channel, event)


async def _stop_renewing(renewal: asyncio.Task[None]) -> None:
    # Cancel until done: on Python 3.11, asyncio.wait_for (redis-py sends every command
    # under one) swallows a cancel that lands as the send completes.
    while not renewal.done():
        renewal.cancel()
        await asyncio.wait([renewal], timeout=0.1)
    if not renewal.cancelled() and (error := renewal.exception()) is not None:
        log.error("renewing a user's lock failed", exc_info=error)


async def _scan_batches(redis: Redis, pattern: str, size: int = 500) -> Any:
    batch: list[Any] = []
    async for key in redis.scan_iter(match=pattern, count=size):
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _parse_begin(result: list[Any]) -> HotState:
    status = BeginStatus(text_of(result[0]))
    if status is not BeginStatus.OK:
        return HotState(status)
    _, flat, config, count, ttl, context, taken_over = result
    session = decode_session(flat)
    return HotState(
        status=status,
        session=session,
        channel=decode_channel(config) if config else None,
        rate=RateCount(int(count), int(ttl)) if session else None,
        context=decode_contexts(context) if context else None,
        taken_over=bool(taken_over),
    )
