"""Token quotas: how many tokens a user, and a group chat, may spend a day and a month.

A quota counts the tokens of each exchange (the prompt tokens stored on the user's
message, the completion tokens on the reply: `messages.token_count`), in UTC days and
months. Its limit is a setting (QUOTA_USER_DAY_TOKENS …, 0: none), which a platform's
`channel_configs` row or a chat's row overrides (`quota_user_day_tokens` …). The
counters live in Redis, read and written by the turn's own scripts; Postgres is the
truth they are rebuilt from when Redis lost them (bot/store/usage.py, `spent`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from bot.domain import ChannelSettings, IncomingMessage

if TYPE_CHECKING:
    from bot.config import Settings


class Holder(StrEnum):
    """Who a quota is of: the writer, or the group chat (with its threads) written in."""

    USER = "user"
    CHAT = "chat"


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"

    def start(self, now: datetime) -> datetime:
        return _bounds(self, now.astimezone(UTC).date())[0]

    def end(self, now: datetime) -> datetime:
        """When the period that holds `now` ends, and its quota starts afresh."""
        return _bounds(self, now.astimezone(UTC).date())[1]

    def stamp(self, now: datetime) -> str:
        """The period in a counter's name: 2026-12-06, or 2026-12."""
        return _bounds(self, now.astimezone(UTC).date())[2]


@functools.lru_cache(maxsize=16)  # each turn asks: a few days' worth is plenty
def _bounds(period: Period, day: date) -> tuple[datetime, datetime, str]:
    """The start, end and name of the period that holds `day` (UTC)."""
    start = datetime(day.year, day.month, 1 if period is Period.MONTH else day.day, tzinfo=UTC)
    if period is Period.DAY:
        return start, start + timedelta(days=1), f"{start:%Y-%m-%d}"
    return start, (start + timedelta(days=32)).replace(day=1), f"{start:%Y-%m}"


@dataclass(frozen=True, slots=True)
class Counter:
    """One quota's counter: whose, over which period."""

    holder: Holder
    period: Period

    @property
    def setting(self) -> str:
        """Its limit's key in a channel's or chat's settings (`quota_user_day_tokens`)."""
        return f"quota_{self.holder}_{self.period}_tokens"


COUNTERS = tuple(Counter(holder, period) for holder in Holder for period in Period)


def chat_of(message: IncomingMessage) -> str | None:
    """The group chat whose quota a message counts against: none for a DM."""
    return None if message.scope.private else message.chat_id


def counters_of(message: IncomingMessage) -> tuple[Counter, ...]:
    """The counters a message counts against: a DM has no chat's."""
    if chat_of(message) is None:
        return tuple(c for c in COUNTERS if c.holder is Holder.USER)
    return COUNTERS


def limits(settings: Settings, channel: ChannelSettings) -> dict[Counter, int]:
    """The limit of each counter (0: none): the chat's or platform's key, else the
    setting."""
    found: dict[Counter, int] = {}
    for counter in COUNTERS:
        value = channel.settings.get(counter.setting)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            value = getattr(settings, counter.setting)
        found[counter] = value
    return found


@dataclass(frozen=True, slots=True)
class Spent:
    """Tokens counted so far this period, by counter; a counter Redis does not hold
    (flushed, evicted, or a new period) is missing until rebuilt from Postgres."""

    tokens: dict[Counter, int]

    @classmethod
    def read(cls, counters: tuple[Counter, ...], counts: Sequence[int | bytes | None]) -> Spent:
        """The counters' counts as Redis gives them: None or -1 for a counter not held."""
        pairs = zip(counters, counts, strict=True)
        held = {c: int(n) for c, n in pairs if n is not None}
        return cls({c: n for c, n in held.items() if n >= 0})

    def missing(self, counters: tuple[Counter, ...]) -> bool:
        return any(c not in self.tokens for c in counters)


@dataclass(frozen=True, slots=True)
class Exceeded:
    counter: Counter
    limit: int
    resets_at: datetime


def exceeded(
    spent: Spent, quota: dict[Counter, int], counters: tuple[Counter, ...], now: datetime
) -> Exceeded | None:
    """The first quota of `counters` used up (the chat's before the user's: a group out
    of tokens is out for everyone), or None."""
    for counter in sorted(counters, key=lambda c: (c.holder is Holder.USER, c.period)):
        limit = quota[counter]
        if limit and spent.tokens.get(counter, 0) >= limit:
            return Exceeded(counter, limit, counter.period.end(now))
    return None


def refusal(found: Exceeded, now: datetime) -> str:
    """What the writer is told: whose quota, and when it starts afresh."""
    whose = "You have" if found.counter.holder is Holder.USER else "This chat has"
    period = "today's" if found.counter.period is Period.DAY else "this month's"
    at = found.resets_at
    when = f"{at:%H:%M} UTC" if found.counter.period is Period.DAY else f"{at.day} {at:%B} (UTC)"
    wait = _duration(found.resets_at - now)
    return (
        f"{whose} used {period} allowance of {found.limit:,} tokens. "
        f"It starts afresh at {when} (in {wait})."
    )


def _duration(left: timedelta) -> str:
    minutes = max(1, int(left.total_seconds() + 59) // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
