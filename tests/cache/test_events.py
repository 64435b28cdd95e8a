"""The states of a platform event's claim, as the scripts write them and ops read them."""

from __future__ import annotations

import pytest

from bot.cache.events import EventClaim, EventState, lua_constants


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (b"processing", EventClaim(EventState.PROCESSING)),
        ("unfinished", EventClaim(EventState.UNFINISHED)),
        (b"done", EventClaim(EventState.DONE)),
        (b"answered:1765000000.25", EventClaim(EventState.ANSWERED, 1765000000.25)),
        (b"answered", None),  # an answer always says when
        (b"done:12", None),
        (b"answered:soon", None),
        (b"1", None),  # not a value the bot writes
    ],
)
def test_a_stored_value_parses_to_its_state(raw: bytes | str, parsed: EventClaim | None) -> None:
    assert EventClaim.parse(raw) == parsed


def test_the_scripts_get_every_state_from_the_enum() -> None:
    constants = lua_constants()
    for state in EventState:
        assert f"'{state.value}'" in constants and f"STATE_{state.name}" in constants
    assert "local ANSWERED_AT = STATE_ANSWERED .. ':'" in constants
