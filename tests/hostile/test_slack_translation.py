"""Slack's translation: any event dict becomes a well-formed IncomingMessage or None.

`incoming_message` is what bolt's event listener calls with the request body and its
`event`; Slack's fields may be missing or of another type than documented (a
subtype we don't know, a `text` that is a list of blocks, an event id that is a number).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.channels.slack_events import escape, incoming_message
from bot.emulators.slack_api import BOT_USER_ID
from tests.hostile.checks import assert_well_formed
from tests.hostile.strategies import any_text, field, hostile_text, json_values

HOSTILE = settings.get_profile("hostile")

TEXTS = st.one_of(hostile_text(100), st.just(f"<@{BOT_USER_ID}>"), st.just(f"<@{BOT_USER_ID}> hi"))
# Values a field may take besides the usual one: other documented ones, and anything.
OTHER_VALUES: dict[str, st.SearchStrategy[object]] = {
    "type": st.sampled_from(["reaction_added", "message.im"]),
    "channel_type": st.sampled_from(["channel", "group", "mpim"]),
    "subtype": st.sampled_from(["file_share", "bot_message", "message_changed", None]),
    "user": st.one_of(st.sampled_from(["", BOT_USER_ID, "W0ENTERPRISE"]), any_text(12)),
    "bot_id": st.just("B0OTHER"),
    "text": TEXTS,
    "channel": any_text(12),
    "ts": st.sampled_from(["", "1700000000.000100"]),
    "thread_ts": st.sampled_from(["", "1700000000.000050"]),
    "user_profile": st.fixed_dictionaries({}, optional={"display_name": json_values()}),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A message the bot would answer, with a few fields removed or replaced."""
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(["message", "app_mention"])),
        "channel_type": "im",
        "user": "U0ALICE123",
        "text": draw(TEXTS),
        "channel": "D0DMCHAN123",
        "ts": "1700000000.000100",
    }
    for key in draw(st.lists(st.sampled_from(sorted(OTHER_VALUES)), max_size=4, unique=True)):
        change = draw(st.sampled_from(["drop", "other", "any"]))
        if change == "drop":
            event.pop(key, None)
        else:
            event[key] = draw(OTHER_VALUES[key] if change == "other" else json_values())
    return event


BODIES = st.fixed_dictionaries(
    {}, optional={"event_id": field(st.one_of(st.just("Ev0123ABC"), any_text(12)))}
)


@settings(HOSTILE, max_examples=300)  # no I/O: cheap
@given(body=BODIES, event=events(), bot_user_id=st.one_of(st.none(), st.just(BOT_USER_ID)))
def test_any_event_becomes_a_well_formed_message_or_none(
    body: dict[str, Any], event: dict[str, Any], bot_user_id: str | None
) -> None:
    message = incoming_message(body, event, bot_user_id)

    if message is not None:
        assert_well_formed(message, "slack")
        assert message.channel_user_id not in ("", bot_user_id)


@HOSTILE
@given(
    text=hostile_text(100).filter(str.strip),
    user=any_text(12).filter(lambda u: u.strip() and u != BOT_USER_ID),
)
def test_a_direct_message_of_any_text_is_translated(text: str, user: str) -> None:
    """What a person writes arrives as they wrote it, Slack's escaping undone."""
    event = {
        "type": "message",
        "channel_type": "im",
        "user": user,
        "text": escape(text),
        "channel": "D0DMCHAN123",
        "ts": "1700000000.000100",
    }
    message = incoming_message({"event_id": "Ev0123ABC"}, event, BOT_USER_ID)

    assert message is not None
    assert_well_formed(message, "slack")
    assert message.text == text.strip() and message.channel_user_id == user
    assert message.platform_message_id == "Ev0123ABC"
