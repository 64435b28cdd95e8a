"""What a message's scripts leave to commands beside them on a Redis Cluster.

A script names keys of one slot: the slot of the place the message is written in
(bot/cache/keys.py). The platform's keys (active users, channel config), the writer's
rate counter and other users' events live in other slots. On a cluster they go in
the same pipeline as the script, and the pipeline sends each command to its own node,
all at once: the message still waits for one round trip.

Beside BEGIN (its first try only, not while polling a held lock): count the writer's
rate, mark them active, read the channel config and the quota counters. Beside FINISH:
cache a channel config read from Postgres, mark the events delivered since the last
call done, count the exchange's tokens on the quota counters, and record the writer's
variant of an experiment (`ab_test:{experiment}`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.client import Pipeline

from bot.cache import scripts
from bot.cache.codec import decode_channel
from bot.cache.events import EventState
from bot.cache.keys import RATE_WINDOW_SECONDS, Keys
from bot.cache.lua import BoundScript
from bot.cache.state import RateCount
from bot.domain import ChannelSettings, IncomingMessage
from bot.experimentset import Assignment
from bot.quotas import Counter, Spent


@dataclass(frozen=True, slots=True)
class PlatformReads:
    """What was read beside BEGIN."""

    rate: RateCount
    channel: ChannelSettings | None
    spent: Spent


class Beside:
    def __init__(
        self,
        keys: Keys,
        rate: BoundScript[scripts.Rate],
        active: BoundScript[scripts.Active],
        quota: BoundScript[scripts.Quota],
    ) -> None:
        self.keys = keys
        self._rate = rate
        self._active = active
        self._quota = quota

    async def before_begin(
        self, pipe: Pipeline, message: IncomingMessage, quota_keys: Sequence[str]
    ) -> None:
        """Queue the rate count, the mark of activity, the channel config's read and the
        quota counters'."""
        keys, channel = self.keys, message.channel
        counter = keys.rate_of(channel, message.channel_user_id)
        await self._rate(scripts.Rate(rate_key=counter, window=RATE_WINDOW_SECONDS), pipe)
        seen = scripts.Active(
            active_key=keys.active(channel),
            now=time.time(),
            window=keys.active_window,
            member=message.channel_user_id,
        )
        await self._active(seen, pipe)
        pipe.get(keys.channel_config(channel))
        for key in quota_keys:
            pipe.get(key)

    @staticmethod
    def read(results: Sequence[Any], counters: tuple[Counter, ...]) -> PlatformReads:
        """The reads, from the results `before_begin` added."""
        (count, ttl), _, config, *spent = results
        channel = decode_channel(config) if config else None
        return PlatformReads(RateCount(int(count), int(ttl)), channel, Spent.read(counters, spent))

    def after_finish(
        self,
        pipe: Pipeline,
        channel: str,
        config: str | None,
        delivered: Sequence[str],
        assignment: Assignment | None = None,
    ) -> None:
        """Queue the writes of FINISH's platform keys, other events and the writer's
        variant of an experiment."""
        keys = self.keys
        if assignment is not None:
            field = keys.ab_test_field(assignment.user_id)
            pipe.hset(keys.ab_test(assignment.experiment), field, assignment.variant)
        if config is not None:
            pipe.set(keys.channel_config(channel), config, ex=keys.channel_config_ttl)
        for key in delivered:
            pipe.set(key, EventState.DONE.value, xx=True, ex=keys.dedup_ttl)

    async def count_quota(
        self, pipe: Pipeline, counts: Sequence[tuple[str, str, int]], tokens: int
    ) -> None:
        """Queue the exchange's count on each quota counter: (key, rebuilt count or '',
        expiry), as FINISH counts them on one Redis."""
        for key, base, expire_at in counts:
            call = scripts.Quota(counter_key=key, base=base, expire_at=expire_at, tokens=tokens)
            await self._quota(call, pipe)
