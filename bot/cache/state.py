"""What one message reads from Redis and writes back: plain data between the cache and
the service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.domain import ChannelSettings, ContextMessage, RecentContext, SessionState
from bot.experimentset import Assignment
from bot.quotas import Counter, Spent


class BeginStatus(StrEnum):
    """What BEGIN answered (bot/cache/scripts.py)."""

    OK = "ok"
    LOCKED = "locked"  # another worker handles this user's previous message
    DUPLICATE = "duplicate"  # this platform event was handled already
    DELIVERING = "delivering"  # its reply is being sent by another worker: wait


class ContextUpdate(StrEnum):
    """How FINISH changes the cached context of the conversation."""

    KEEP = "keep"  # nothing new (a command, a refusal)
    APPEND = "append"  # the new messages go on the cached list
    REPLACE = "replace"  # the list is rebuilt: it was not cached, or may be stale


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
    context: RecentContext | None = None
    taken_over: bool = False  # an earlier handling of this event never finished
    spent: Spent | None = None  # the quota counters' tokens; None: not read


@dataclass(frozen=True, slots=True)
class Refresh:
    """What to write back after the Postgres commit."""

    session: SessionState | None
    context: Sequence[ContextMessage] = ()  # newest first
    context_update: ContextUpdate = ContextUpdate.KEEP
    last_message_id: uuid.UUID | None = None  # the list's fence, when it is written
    channel: ChannelSettings | None = None  # set when it was loaded from Postgres
    assignment: Assignment | None = None  # the writer's variant, for `ab_test:{experiment}`
    quota: QuotaUse | None = None  # tokens the exchange spent, for the quota counters


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """What FINISH counts on the message's quota counters (bot/quotas.py): the exchange's
    tokens, and the counts rebuilt from Postgres of the counters Redis did not hold."""

    tokens: int
    rebuilt: dict[Counter, int]
