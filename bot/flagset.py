"""Feature flags as the service reads them: which flags exist, the values in force at
one moment, and where the service gets them from (held in memory: no round trip per
message). Kept, cached and changed by bot/flags.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.domain import FlagRow
from bot.errors import FlagError

GLOBAL = "global"
MAINTENANCE = "maintenance"
MAINTENANCE_MESSAGE = "maintenance_message"
REPLIES_DISABLED = "replies_disabled"
MAINTENANCE_TEXT = "Sorry, I'm down for maintenance right now. Please try again a little later."
_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}


@dataclass(frozen=True, slots=True)
class FlagSpec:
    kind: type
    help: str


# Every flag the service understands; `bot ops flags set` accepts only these.
KNOWN_FLAGS: dict[str, FlagSpec] = {
    MAINTENANCE: FlagSpec(
        bool,
        "answer every message with the maintenance text; nothing is stored and the "
        "responder is not called",
    ),
    MAINTENANCE_MESSAGE: FlagSpec(str, "the text sent in maintenance mode"),
    REPLIES_DISABLED: FlagSpec(
        bool, "ignore messages: no reply, nothing stored, the responder is not called"
    ),
}
MAX_TEXT = 2000


def parse_value(name: str, raw: str) -> Any:
    """The JSON value of a flag from what an operator typed, checked against its type."""
    spec = KNOWN_FLAGS.get(name)
    if spec is None:
        raise FlagError(f"unknown flag {name!r}; known flags: {', '.join(sorted(KNOWN_FLAGS))}")
    if spec.kind is bool:
        word = raw.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise FlagError(f"flag {name} is true or false (also on/off, yes/no, 1/0), not {raw!r}")
    text = raw.strip()
    if not text or len(text) > MAX_TEXT or "\x00" in text:
        raise FlagError(f"flag {name} is a text of 1 to {MAX_TEXT} characters")
    return text


@dataclass(frozen=True, slots=True)
class FlagSet:
    """The flags at one moment: a channel's value wins over the global one."""

    global_: Mapping[str, Any] = field(default_factory=dict)
    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Sequence[FlagRow]) -> FlagSet:
        global_: dict[str, Any] = {}
        channels: dict[str, dict[str, Any]] = {}
        for row in rows:
            target = global_ if row.scope == GLOBAL else channels.setdefault(row.scope, {})
            target[row.name] = row.value
        return cls(global_, channels)

    def value(self, name: str, channel: str | None = None) -> Any:
        scoped = self.channels.get(channel, {}) if channel else {}
        return scoped[name] if name in scoped else self.global_.get(name)

    def enabled(self, name: str, channel: str | None = None) -> bool:
        return self.value(name, channel) is True

    def maintenance_text(self, channel: str) -> str:
        text = self.value(MAINTENANCE_MESSAGE, channel)
        return text if isinstance(text, str) and text else MAINTENANCE_TEXT

    def rows(self) -> list[FlagRow]:
        found = [FlagRow(GLOBAL, n, v) for n, v in self.global_.items()]
        for channel, values in self.channels.items():
            found += [FlagRow(channel, n, v) for n, v in values.items()]
        return sorted(found, key=lambda row: (row.scope, row.name))


class FlagSource(Protocol):
    """What the service reads: the flags in force now, held in memory."""

    current: FlagSet


class StaticFlags:
    """Flags that never change (tests, tools): the default of a service built bare."""

    def __init__(self, flags: FlagSet | None = None) -> None:
        self.current = flags or FlagSet()
