"""The worker's scheduled upkeep of `messages` (revision 0007): monthly partitions made
ahead, and retention (RETENTION_DAYS, off by default).

Retention, in order: whole months entirely older than the cutoff are detached and
dropped (their claims deleted first, in batches); the month the cutoff falls in (and
rows of the default partition) is trimmed in batches of PURGE_BATCH_SIZE, one short
transaction each; inactive conversations left empty are deleted; the Redis contexts
of every conversation touched are dropped. One worker at a time runs it, under a
Redis lock; without Redis the run waits for the next tick (nothing depends on it).
Each step is safe to repeat, so a run cut short is finished by the next one.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.cache.admin import CacheAdmin
from bot.errors import CacheUnavailable
from bot.metrics import Metrics
from bot.store.housekeeping import HousekeepingQueries
from bot.store.partitions import Partition, PartitionQueries, add_months, month_start

log = logging.getLogger(__name__)


async def ensure_partitions(
    partitions: PartitionQueries, ahead: int, now: datetime | None = None
) -> list[datetime]:
    """Make the partitions of the current month and `ahead` more; the months made."""
    current = month_start(now or datetime.now(UTC))
    made = []
    for month in (add_months(current, n) for n in range(ahead + 1)):
        if await partitions.create_month(month):
            made.append(month)
    return made


@dataclass(slots=True)
class RetentionResult:
    cutoff: datetime
    months_dropped: list[str] = field(default_factory=list)
    messages: int = 0  # deleted, whole months included
    conversations: int = 0
    ratings: int = 0  # reply posts and ratings of replies (feedback)
    contexts: int | None = 0  # Redis contexts dropped; None: Redis was unreachable
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Retention:
    partitions: PartitionQueries
    housekeeping: HousekeepingQueries
    cache: CacheAdmin | None
    batch: int

    async def run(self, cutoff: datetime) -> RetentionResult:
        started = time.monotonic()
        result = RetentionResult(cutoff)
        touched: set[uuid.UUID] = set()
        for partition in await self.partitions.partitions():
            if partition.upper is not None and partition.upper <= cutoff:
                await self._drop(partition, result, touched)
        while ids := await self.housekeeping.purge_messages(cutoff, self.batch):
            result.messages += len(ids)
            touched.update(ids)
        while ids := await self.housekeeping.purge_conversations(cutoff, self.batch):
            result.conversations += len(ids)
            touched.update(ids)
        while count := await self.housekeeping.purge_ratings(cutoff, self.batch):
            result.ratings += count
        result.contexts = await self._drop_contexts(touched)
        result.seconds = time.monotonic() - started
        return result

    async def _drop(
        self, partition: Partition, result: RetentionResult, touched: set[uuid.UUID]
    ) -> None:
        assert partition.lower is not None and partition.upper is not None
        while await self.partitions.delete_claims(partition.lower, partition.upper, self.batch):
            pass
        dropped = await self.partitions.drop_month(partition)
        if dropped is not None:
            result.months_dropped.append(dropped.name)
            result.messages += dropped.rows
            touched.update(dropped.conversations)

    async def _drop_contexts(self, conversations: set[uuid.UUID]) -> int | None:
        if self.cache is None:
            return None
        try:
            return await self.cache.drop_contexts(conversations) if conversations else 0
        except CacheUnavailable:
            return None  # they expire by their TTL


def retention_cutoff(days: int, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(days=days)


def record(metrics: Metrics, result: RetentionResult) -> None:
    """The run's metrics and its one log line."""
    metrics.retention_runs.inc()
    metrics.retention_deleted.labels("messages").inc(result.messages)
    metrics.retention_deleted.labels("conversations").inc(result.conversations)
    metrics.retention_deleted.labels("partitions").inc(len(result.months_dropped))
    metrics.retention_deleted.labels("ratings").inc(result.ratings)
    metrics.retention_seconds.set(result.seconds)
    log.info(
        "retention before %s: %d messages (%d whole months: %s), %d empty conversations, "
        "%d reply posts and ratings, %s cached contexts dropped, in %.1f s",
        f"{result.cutoff:%Y-%m-%d %H:%M}Z",
        result.messages,
        len(result.months_dropped),
        ", ".join(result.months_dropped) or "none",
        result.conversations,
        result.ratings,
        "?" if result.contexts is None else result.contexts,
        result.seconds,
    )


@dataclass(frozen=True, slots=True)
class Maintenance:
    """One tick of the worker's upkeep: partitions ahead, then retention if it is on
    and no other worker ran it this interval."""

    partitions: PartitionQueries
    housekeeping: HousekeepingQueries
    cache: CacheAdmin
    metrics: Metrics
    ahead: int
    retention_days: int | None
    batch: int
    interval: float
    worker: str  # names the claim holder, for whoever reads the lock key

    async def tick(self) -> RetentionResult | None:
        made = await ensure_partitions(self.partitions, self.ahead)
        if made:
            self.metrics.partitions_created.inc(len(made))
            log.info("partitions of messages made: %s", ", ".join(f"{m:%Y-%m}" for m in made))
        if self.retention_days is None or not await self._claimed():
            return None
        retention = Retention(self.partitions, self.housekeeping, self.cache, self.batch)
        result = await retention.run(retention_cutoff(self.retention_days))
        record(self.metrics, result)
        return result

    async def _claimed(self) -> bool:
        try:
            # A little under the interval: the next tick of any worker finds it lapsed.
            seconds = max(1, int(self.interval * 0.9))
            return await self.cache.claim_run("retention", self.worker, seconds)
        except CacheUnavailable:
            log.warning("retention skipped: Redis is unreachable to claim the run")
            return False
