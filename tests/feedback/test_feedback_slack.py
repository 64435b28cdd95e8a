"""Ratings of replies on Slack: the feedback buttons (Block Kit context_actions with a
feedback_buttons element) under each reply, and the block_actions payload of a click,
through slack-bolt and slack-sdk for real against the local Slack: signed over HTTP,
and over Socket Mode. Real Postgres and Redis behind the service."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.emulators.slack_api import BotMessage, FakeSlack, event_envelope, interaction
from tests.channels.test_slack import (
    LongResponder,
    Running,
    Start,
    deliver_event,
    dm,
    post_event,
    slack_id,
)
from tests.feedback.support import rated_as, ratings, replies_to
from tests.support import until

pytestmark = pytest.mark.timeout(20)

FORM = "application/x-www-form-urlencoded"


async def click(run: Running, user: str, message: BotMessage, value: str) -> int:
    """POST a click of a feedback button to the adapter's Request URL, as Slack does:
    form-encoded, its JSON in the payload field, signed."""
    body = urlencode({"payload": json.dumps(interaction(user, message, value))}).encode()
    status, _ = await post_event(run.events_url, body, headers={"Content-Type": FORM})
    return status


def reply_message(slack: FakeSlack, text: str) -> BotMessage:
    """The bot's complete message whose text holds `text`."""
    [found] = [m for m in slack.messages.values() if m.complete and text in m.text]
    return found


async def answered(run: Running, slack: FakeSlack, user: str, text: str) -> BotMessage:
    await deliver_event(run, slack, dm(user, text))
    await until(lambda: any(m.complete and text in m.text for m in slack.messages.values()))
    return reply_message(slack, text)


async def test_a_click_over_http_rates_the_reply_the_latest_click_wins(
    slack_start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await slack_start()
    ada = slack_id("U")
    shown = await answered(run, slack, ada, "rate me")
    [reply] = await replies_to(engine, "slack", ada)
    assert shown.streamed and shown.feedback_value(True) == f"1:{reply}"  # stopStream's blocks

    assert await click(run, ada, shown, shown.feedback_value(True)) == 200
    await rated_as(engine, "slack", ada, {reply: 1})
    assert await click(run, ada, shown, shown.feedback_value(False)) == 200
    await rated_as(engine, "slack", ada, {reply: -1})


async def test_a_click_over_socket_mode_is_recorded_then_acknowledged(
    slack_start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    await slack_start(socket=True)
    bo = slack_id("U")
    await slack.push(event_envelope(dm(bo, "over the socket")))
    await until(lambda: any(m.complete and "socket" in m.text for m in slack.messages.values()))
    shown = reply_message(slack, "over the socket")
    [reply] = await replies_to(engine, "slack", bo)

    envelope = await slack.push_interactive(interaction(bo, shown, shown.feedback_value(False)))
    await until(lambda: envelope in {ack.get("envelope_id") for ack in slack.acks})
    assert await ratings(engine, "slack", bo) == {reply: -1}  # recorded before the ack


async def test_where_streams_are_refused_the_buttons_go_under_the_posted_text(
    slack_start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    slack.streams_refused = "feature_not_enabled"
    run = await slack_start(LongResponder())
    cy = slack_id("U")
    await deliver_event(run, slack, dm(cy, "a lot please"))
    await until(lambda: sum(m.complete for m in slack.messages.values()) >= 3)
    parts = [m for m in slack.messages.values() if m.complete]
    [reply] = await replies_to(engine, "slack", cy)
    last = parts[-1]
    assert last.blocks[0]["type"] == "markdown" and last.blocks[0]["text"] == last.text
    assert last.feedback_value(True) == f"1:{reply}"

    assert await click(run, cy, last, last.feedback_value(True)) == 200
    await rated_as(engine, "slack", cy, {reply: 1})


async def test_forged_values_unknown_replies_and_other_forms_store_nothing(
    slack_start: Start, slack: FakeSlack, engine: AsyncEngine
) -> None:
    run = await slack_start()
    dee = slack_id("U")
    shown = await answered(run, slack, dee, "keep it")
    [reply] = await replies_to(engine, "slack", dee)

    assert await click(run, dee, shown, f"1:{uuid.uuid4()}") == 200  # no such reply
    assert await click(run, dee, shown, "great!") == 200  # not a value of ours
    user_message = await replies_to(engine, "slack", dee)
    assert user_message == [reply]
    assert await ratings(engine, "slack", dee) == {}
    two_fields = urlencode({"payload": "{}", "extra": "1"}).encode()
    status, _ = await post_event(run.events_url, two_fields, headers={"Content-Type": FORM})
    assert status == 400
    status, _ = await post_event(run.events_url, b"payload=[1]", headers={"Content-Type": FORM})
    assert status == 400  # not a JSON object


async def test_without_feedback_buttons_or_for_a_command_no_buttons_are_shown(
    slack_start: Start, slack: FakeSlack
) -> None:
    run = await slack_start(slack_feedback_buttons=False)
    eve = slack_id("U")
    shown = await answered(run, slack, eve, "no buttons")
    assert shown.blocks == []

    other = await slack_start()
    fay = slack_id("U")
    await deliver_event(other, slack, dm(fay, "/help"))
    await until(lambda: any(m.complete and "/reset" in m.text for m in slack.messages.values()))
    helped: Any = reply_message(slack, "/reset")
    assert helped.blocks == []
