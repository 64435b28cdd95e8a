"""The blocklist as the service reads it: the platform users it ignores at one moment,
and where the service gets them from (held in memory: no round trip per message).
Kept, cached and changed by bot/blocklist.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bot.domain import BlockedRow


@dataclass(frozen=True, slots=True)
class Blocklist:
    """The blocked (channel, platform user id) pairs at one moment."""

    users: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @classmethod
    def from_rows(cls, rows: Sequence[BlockedRow]) -> Blocklist:
        return cls(frozenset((row.channel, row.channel_user_id) for row in rows))

    def blocks(self, channel: str, channel_user_id: str) -> bool:
        return (channel, channel_user_id) in self.users


class BlockSource(Protocol):
    """What the service reads: the blocklist in force now, held in memory."""

    current: Blocklist


class StaticBlocklist:
    """A blocklist that never changes (tests, tools): the default of a service built bare."""

    def __init__(self, blocklist: Blocklist | None = None) -> None:
        self.current = blocklist or Blocklist()
