"""Telegram's translation: any update body becomes a well-formed IncomingMessage or None.

Bodies go through python-telegram-bot's own `Update.de_json` (in `parse_update`), as a
webhook body or a polled update does, then through `incoming_message`. Fields are
dropped or replaced by other values, of the documented type or of any JSON type.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from telegram import Bot

from bot.channels.telegram_updates import incoming_message, parse_update
from bot.emulators.telegram_api import BOT_ID, BOT_USERNAME, TOKEN
from tests.hostile.checks import assert_well_formed
from tests.hostile.strategies import any_text, hostile_text, json_values

HOSTILE = settings.get_profile("hostile")
BOT = Bot(TOKEN)  # only carried by the parsed objects: no request is made
MENTION = f"@{BOT_USERNAME}"

TEXTS = st.one_of(
    hostile_text(100), st.sampled_from([MENTION, f"{MENTION} hi", "/help", f"/help@{BOT_USERNAME}"])
)
IDS = st.one_of(st.integers(-(2**63), 2**63), st.sampled_from([0, 1, -1, BOT_ID]))
# Other values a field may take than the one of the plain private message below.
MESSAGE_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "text": TEXTS,
    "date": st.one_of(st.integers(-(2**40), 2**62), st.floats(allow_nan=False)),
    "message_thread_id": IDS,
    "is_topic_message": st.booleans(),
    "sender_chat": st.fixed_dictionaries({"id": IDS, "type": st.just("channel")}),
    "entities": st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["mention", "bot_command", "bold"]),
                "offset": st.integers(-3, 300),
                "length": st.integers(-3, 300),
            }
        ),
        max_size=3,
    ),
    "reply_to_message": st.fixed_dictionaries(
        {"message_id": IDS, "date": st.just(0), "chat": st.just({"id": 1, "type": "private"})},
        optional={"from": st.just({"id": BOT_ID, "is_bot": True, "first_name": "Bot"})},
    ),
}
USER_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "id": IDS,
    "is_bot": st.booleans(),
    "first_name": any_text(20),
    "last_name": any_text(20),
    "username": any_text(20),
}
CHAT_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "id": IDS,
    "type": st.sampled_from(["private", "group", "supergroup", "channel", "secret"]),
}


def _mutate(
    draw: st.DrawFn, value: dict[str, Any], others: dict[str, st.SearchStrategy[object]]
) -> dict[str, Any]:
    for key in draw(st.lists(st.sampled_from(sorted(others)), max_size=2, unique=True)):
        change = draw(st.sampled_from(["drop", "other", "other", "any"]))
        if change == "drop":
            value.pop(key, None)
        else:
            value[key] = draw(others[key] if change == "other" else json_values())
    return value


@st.composite
def update_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A private or group text message, with fields at every level dropped or replaced."""
    person = _mutate(draw, {"id": 12345, "is_bot": False, "first_name": "Ada"}, USER_FIELDS)
    group = draw(st.booleans())
    chat = {"id": -100123 if group else 12345, "type": "supergroup" if group else "private"}
    message = {"message_id": 7, "date": 1_700_000_000, "chat": _mutate(draw, chat, CHAT_FIELDS)}
    message["from"] = person
    message["text"] = draw(TEXTS)
    body: dict[str, Any] = {
        "update_id": draw(IDS),
        "message": _mutate(draw, message, MESSAGE_FIELDS),
    }
    return body


@settings(HOSTILE, max_examples=300)  # no I/O: cheap
@given(body=st.one_of(update_bodies(), update_bodies(), json_values()))
def test_any_update_becomes_a_well_formed_message_or_none(body: object) -> None:
    update = parse_update(body, BOT)
    if update is None:
        return
    message = incoming_message(update, BOT_ID, BOT_USERNAME)

    if message is not None:
        assert_well_formed(message, "telegram")
        assert message.platform_message_id == f"{BOT_ID}:{update.update_id}"


@HOSTILE
@given(text=hostile_text(100).filter(str.strip), user_id=st.integers(1, 2**52))
def test_a_private_message_of_any_text_is_translated(text: str, user_id: int) -> None:
    body = {
        "update_id": 1,
        "message": {
            "message_id": 7,
            "date": 1_700_000_000,
            "chat": {"id": user_id, "type": "private"},
            "from": {"id": user_id, "is_bot": False, "first_name": "Ada", "last_name": "L"},
            "text": text,
        },
    }
    update = parse_update(body, BOT)
    assert update is not None

    message = incoming_message(update, BOT_ID, BOT_USERNAME)

    assert message is not None
    assert_well_formed(message, "telegram")
    assert message.text == text and message.channel_user_id == str(user_id)
    assert message.username == "Ada L" and message.chat_id == str(user_id)


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@HOSTILE
@given(before=any_text(20), after=any_text(20))
def test_a_mention_after_any_text_addresses_the_bot_in_a_group(before: str, after: str) -> None:
    """Entity offsets count UTF-16 units: emoji and lone surrogates before the mention."""
    text = f"{before} {MENTION} {after}"
    body = {
        "update_id": 1,
        "message": {
            "message_id": 7,
            "date": 1_700_000_000,
            "chat": {"id": -100123, "type": "supergroup"},
            "from": {"id": 42, "is_bot": False, "first_name": "Ada"},
            "text": text,
            "entities": [
                {"type": "mention", "offset": utf16_units(f"{before} "), "length": len(MENTION)}
            ],
        },
    }
    update = parse_update(body, BOT)
    assert update is not None

    message = incoming_message(update, BOT_ID, BOT_USERNAME)

    assert message is not None, text
    assert MENTION not in message.text
