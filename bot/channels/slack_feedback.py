"""Slack's feedback buttons (Block Kit: a context_actions block holding a
feedback_buttons element) under a reply, and the block_actions payload a click sends,
translated. Pure functions, no I/O.

Each button's value names the rated reply itself: "{rating}:{messages.id}" (Slack
signs what it sends back, so the value is the one posted). Slack has no click that
takes a rating back: a user's latest click is their rating.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from bot.domain import FeedbackEvent, PostRef, Rating

FEEDBACK_ACTION = "reply_feedback"  # the action_id bolt routes clicks by


def feedback_blocks(message_id: uuid.UUID) -> list[dict[str, Any]]:
    """The block that puts 👍/👎 buttons under the reply `message_id`."""

    def button(label: str, rating: Rating, accessible: str) -> dict[str, Any]:
        text = {"type": "plain_text", "text": label, "emoji": True}
        value = f"{int(rating)}:{message_id}"
        return {"text": text, "value": value, "accessibility_label": accessible}

    buttons = {
        "type": "feedback_buttons",
        "action_id": FEEDBACK_ACTION,
        "positive_button": button("\N{THUMBS UP SIGN}", Rating.GOOD, "Good reply"),
        "negative_button": button("\N{THUMBS DOWN SIGN}", Rating.BAD, "Bad reply"),
    }
    return [{"type": "context_actions", "elements": [buttons]}]


def feedback_event(body: Mapping[str, Any], action: Mapping[str, Any]) -> FeedbackEvent | None:
    """A click of the feedback buttons, or None for a payload that is not one (bolt
    checks no types: a field of another type than Slack documents counts as absent)."""
    value, user = action.get("value"), body.get("user")
    if not isinstance(value, str) or not isinstance(user, dict):
        return None
    rating, _, reply = value.partition(":")
    user_id = user.get("id")
    try:
        found = Rating(int(rating))
        message_id = uuid.UUID(reply)
    except ValueError:
        return None
    if not isinstance(user_id, str) or not user_id:
        return None
    return FeedbackEvent("slack", user_id, found, _post(body), message_id)


def _post(body: Mapping[str, Any]) -> PostRef | None:
    """The message the buttons are on (its channel and ts), when the payload says."""
    container = body.get("container")
    fields = container if isinstance(container, dict) else {}
    channel, ts = fields.get("channel_id"), fields.get("message_ts")
    if isinstance(channel, str) and isinstance(ts, str):
        return PostRef(channel, ts)
    return None
