"""Answered once: the state of a platform event in Redis, and how it moves.

Platforms deliver an event more than once (Slack retries, Telegram re-sent updates,
two workers behind one webhook). Each event id has one key, `dedup:{channel}:{id}`
(Keys.dedup), whose value is an EventState. The Lua scripts of bot/cache/scripts.py
move it, always under the user's lock; Postgres backs it with a unique key on
(channel, platform message id), so a state lost with Redis costs at most a redelivery
answered from what Postgres stored.

    (no key) ──BEGIN──► processing ──FINISH──► answered:<t> ──delivered──► done
        ▲                 │    │                     │
        └──ABORT(forget)──┘    └──ABORT(unknown)──► unfinished

    BEGIN finds   done ......................... a duplicate: say nothing
                  answered:<t>, t + lease > now . another worker is sending the reply:
                                                  wait for it as for a lock
                  answered:<t>, older;
                  processing; unfinished ....... taken over: a holder died or failed
                                                  with its outcome unknown, so the
                                                  service asks Postgres whether the
                                                  exchange is stored, and sends the
                                                  stored reply if it is

- processing: claimed by BEGIN while its handler works. Only ever found by a later
  BEGIN if the holder is gone (the lock is taken first), so it is taken over.
- answered:<t>: FINISH after the exchange was committed; the reply is with the adapter.
  The time lets a redelivery tell a reply being sent (within DELIVERY_LEASE_SECONDS)
  from one whose worker died before sending it.
- done: the adapter delivered the whole reply (bot/cache/delivery.py batches the marks).
- unfinished: ABORT after a failure whose outcome is unknown (a commit whose answer was
  lost); the next delivery takes it over.
ABORT after a failure that stored nothing deletes the key, so that a redelivery is
answered afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.cache.codec import text_of


class EventState(StrEnum):
    PROCESSING = "processing"
    ANSWERED = "answered"  # stored as 'answered:<unix time>'
    UNFINISHED = "unfinished"
    DONE = "done"

    @property
    def meaning(self) -> str:
        """What the state says, for an operator (`bot ops event`)."""
        return _MEANINGS[self]


_MEANINGS = {
    EventState.PROCESSING: "being handled (or its worker died: the next delivery takes it over)",
    EventState.ANSWERED: "stored, its reply with the adapter (a redelivery after "
    "DELIVERY_LEASE_SECONDS sends the stored reply)",
    EventState.UNFINISHED: "its handling failed with the outcome unknown: the next delivery "
    "takes it over and sends the stored reply if the exchange was stored",
    EventState.DONE: "answered and delivered: a redelivery says nothing",
}


ANSWERED_SEPARATOR = ":"


@dataclass(frozen=True, slots=True)
class EventClaim:
    """An event key's value, read back (by ops)."""

    state: EventState
    answered_at: float | None = None  # unix time, for ANSWERED

    @classmethod
    def parse(cls, raw: bytes | str) -> EventClaim | None:
        """The claim a value names; None for a value no version of the bot writes."""
        name, _, at = text_of(raw).partition(ANSWERED_SEPARATOR)
        try:
            state = EventState(name)
            answered_at = float(at) if state is EventState.ANSWERED else None
        except ValueError:
            return None
        if (state is EventState.ANSWERED) != bool(at):
            return None
        return cls(state, answered_at)


def lua_constants() -> str:
    """The states as Lua locals, so the scripts spell none of them themselves."""
    names = [f"STATE_{state.name}" for state in EventState]
    values = [f"'{state.value}'" for state in EventState]
    separator = f"local ANSWERED_AT = STATE_ANSWERED .. '{ANSWERED_SEPARATOR}'"
    return f"local {', '.join(names)} = {', '.join(values)}\n{separator}\n"
