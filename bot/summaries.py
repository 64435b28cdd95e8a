"""Summaries of long conversations: the oldest part of a context that outgrows its
budget is summarised by the responder, in the background, and the context becomes
the summary and the messages after what it covers (README, "Conversation summaries").

After a turn is stored and its cache refreshed, the service hands this module the
context the next turn will read (`window_after`). If it is due (SummaryPolicy), a task
of this worker's (at most SUMMARY_MAX_TASKS at once, one per conversation, drained at
shutdown) takes the conversation's summary lock in Redis, reads the latest summary
and the messages after it from Postgres, asks the responder to summarise all but the
newest of them (continuing the summary so far), and stores the summary as a `system`
message (bot/store/summaries.py: one per base, whatever other workers do). It then
forgets the cached context, so that the next message reads the new one from Postgres.

Nobody waits for it: a reply is never delayed by a summary, and a turn racing one is
answered on the context it read, which lost nothing (the summary leaves the turn's
fence alone, and deletes no message). A summary that fails is tried again when the
conversation's next turn finds its context still due.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from bot.cache.hotstate import HotStateCache
from bot.cache.state import ContextUpdate, Refresh
from bot.config import Settings
from bot.domain import ContextMessage, IncomingMessage, RecentContext
from bot.errors import ResponderError, StoreError
from bot.responders.base import Responder, SummaryRequest, estimate_tokens
from bot.store.store import Store
from bot.store.summaries import StoredMessage, SummaryRow, Uncovered
from bot.tallies import Tally

log = logging.getLogger(__name__)

READ_LIMIT = 200  # messages after the latest summary read to make the next one
LOCK_MARGIN_SECONDS = 30.0  # the summary lock outlives the summary call's deadline by this
SAME_TIME = timedelta(milliseconds=1)  # Redis keeps times as floats: equal within this
GAP = timedelta(microseconds=1)  # a summary's time: this after the last message it covers


@dataclass(frozen=True, slots=True)
class SummaryPolicy:
    """When a context is summarised, and how much of it a summary leaves."""

    at_tokens: int  # a context this big (estimated) is due
    keep_tokens: int  # the newest messages a summary leaves fill at most this
    window: int  # CONTEXT_MESSAGES: a context holding this many messages is due too

    @classmethod
    def of(cls, settings: Settings) -> SummaryPolicy:
        budget = settings.llm_context_token_budget
        return cls(
            at_tokens=budget * settings.summary_at_percent // 100,
            keep_tokens=budget * settings.summary_keep_percent // 100,
            window=settings.context_messages,
        )

    def due(self, context: Sequence[ContextMessage]) -> bool:
        """Whether the context has outgrown its budget: its messages (and summary) reach
        `at_tokens`, or its messages fill the window (older ones would drop out of it)."""
        plain = sum(1 for m in context if not m.is_summary)
        if plain <= 2:
            return False  # the newest exchange is never summarised
        tokens = sum(estimate_tokens(m.content) for m in context)
        return plain >= self.window or tokens >= self.at_tokens

    def covered(self, messages: Sequence[StoredMessage]) -> int:
        """How many of the messages (oldest first) a summary covers: all but the newest
        that fill `keep_tokens` and half the window, and at least the newest exchange,
        cut before a user message (an exchange stays whole) where time leaves room for
        the summary between the last covered message and the first kept one."""
        kept, room = 0, self.keep_tokens
        for stored in reversed(messages):
            room -= estimate_tokens(stored.message.content)
            if kept >= 2 and (room < 0 or kept >= self.window // 2):
                break
            kept += 1
        cut = len(messages) - kept
        starts_reply = 0 < cut < len(messages) and messages[cut].message.role != "user"
        if starts_reply and messages[cut - 1].message.role == "user":
            cut -= 1  # the reply stays with its message
        while cut > 0 and _gap(messages[cut - 1], messages[cut]) <= GAP:
            cut -= 1
        return max(cut, 0)


def _gap(older: StoredMessage, newer: StoredMessage) -> timedelta:
    return newer.message.timestamp - older.message.timestamp


def window_after(cached: RecentContext | None, refresh: Refresh) -> list[ContextMessage]:
    """The context the conversation's next turn reads, as this turn's refresh leaves it
    (newest first; untrimmed: what the window drops counts for `due` too)."""
    if refresh.context_update is ContextUpdate.APPEND and cached is not None:
        return [*refresh.context, *cached.messages]
    if refresh.context_update is ContextUpdate.REPLACE:
        return list(refresh.context)
    return []


@dataclass(frozen=True, slots=True)
class Job:
    """One conversation to summarise, as a turn left it."""

    message: IncomingMessage  # the turn's: names the conversation's keys in Redis
    shared: bool
    conversation_id: uuid.UUID
    model: str
    cached_summary: ContextMessage | None  # the summary the turn's context held


class Summarizer:
    """This worker's summaries in the background (the service owns it)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: HotStateCache,
        responder: Responder,
        stats: Counter[Tally],
    ) -> None:
        self.enabled = settings.summary_enabled
        self.policy = SummaryPolicy.of(settings)
        self.store, self.cache, self.responder, self.stats = store, cache, responder, stats
        self._settings = settings
        self._lock_seconds = settings.llm_retry_deadline_seconds + LOCK_MARGIN_SECONDS
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}  # by conversation

    def consider(
        self,
        message: IncomingMessage,
        shared: bool,
        conversation_id: uuid.UUID,
        model: str,
        context: Sequence[ContextMessage],
    ) -> None:
        """Start summarising the conversation if `context` (what its next turn reads) is
        due and it is not being summarised here already; returns at once."""
        if not self.enabled or conversation_id in self._tasks or not self.policy.due(context):
            return
        if len(self._tasks) >= self._settings.summary_max_tasks:
            self.stats[Tally.SUMMARY_SKIPPED] += 1
            return
        summary = context[-1] if context and context[-1].is_summary else None
        chosen = self._settings.summary_model or model
        job = Job(message, shared, conversation_id, chosen, summary)
        task = asyncio.create_task(self._run(job), name=f"summary:{conversation_id}")
        self._tasks[conversation_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(conversation_id, None))

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def drain(self, seconds: float) -> None:
        """Let the summaries running finish within `seconds` (at shutdown), then cancel
        the rest: each is asked for again by its conversation's next turn."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self, job: Job) -> None:
        lock = await self.cache.summaries.lock(job.conversation_id, self._lock_seconds)
        if lock is None:
            return  # another worker is summarising it
        try:
            await self._summarise(job)
        except (ResponderError, StoreError) as exc:
            self.stats[Tally.SUMMARY_FAILED] += 1
            log.warning("cannot summarise conversation %s: %s", job.conversation_id, exc)
        except Exception:
            self.stats[Tally.SUMMARY_FAILED] += 1
            log.exception("summarising conversation %s failed", job.conversation_id)
        finally:
            await self.cache.summaries.unlock(lock)

    async def _summarise(self, job: Job) -> None:
        found = await self.store.summaries.uncovered(job.conversation_id, READ_LIMIT)
        context = [stored.message for stored in reversed(found.messages)]
        due = self.policy.due(context + ([found.summary.message] if found.summary else []))
        count = self.policy.covered(found.messages) if due else 0
        if count == 0:
            # Summarised since the turn read its context (by another worker, or by this
            # one while the turn went on): that context, if cached, is forgotten.
            if _stale(job.cached_summary, found):
                await self.cache.summaries.forget_context(
                    job.message, job.shared, job.conversation_id
                )
            return
        covered = found.messages[:count]
        previous = found.summary
        request = SummaryRequest(
            model=job.model,
            messages=[stored.message for stored in covered],
            channel=job.message.channel,
            instructions=self._settings.summary_prompt,
            max_tokens=self._settings.summary_max_tokens,
            previous=previous.message.content if previous else None,
        )
        result = await self.responder.summarise(request)
        row = SummaryRow(
            id=uuid.uuid4(),
            conversation_id=job.conversation_id,
            base=previous.id if previous else None,
            channel=job.message.channel,
            content=result.text,
            timestamp=covered[-1].message.timestamp + GAP,
            covers=(previous.message.summary_of or 0 if previous else 0) + count,
            covers_until=covered[-1],
            model_used=result.model_used,
            completion_tokens=result.completion_tokens,
            prompt_tokens=result.prompt_tokens,
        )
        if not await self.store.summaries.save(row):
            return  # another worker's summary went in first
        self.stats[Tally.SUMMARISED] += 1
        log.info("conversation %s: %d messages summarised", job.conversation_id, count)
        await self.cache.summaries.forget_context(job.message, job.shared, job.conversation_id)


def _stale(cached: ContextMessage | None, found: Uncovered) -> bool:
    """Whether the summary a turn's context held is not the latest one stored."""
    latest = found.summary.message if found.summary else None
    if cached is None or latest is None:
        return cached is not latest
    return abs(cached.timestamp - latest.timestamp) > SAME_TIME
