"""Telegram's translation: a Bot API update in, an IncomingMessage (or nothing) out.

Pure functions, no I/O. python-telegram-bot builds its objects without checking
types, so a field of the wrong type surfaces wherever it is first used: here every
field the bot reads is checked, and an update that is not what Telegram documents is
ignored rather than failing later.
"""

from __future__ import annotations

import re
from typing import Any, TypeGuard

from telegram import (
    Bot,
    Chat,
    Message,
    MessageEntity,
    MessageReactionUpdated,
    ReactionTypeEmoji,
    Update,
    User,
)
from telegram.constants import ChatType

from bot.domain import ChatKind, FeedbackEvent, IncomingMessage, PostRef, Rating, rating_of

CHANNEL = "telegram"

# What PTB's de_json raises for data of the wrong shape: it checks nothing itself,
# so the error is whatever the first misused value raises (a date too large for a
# datetime is an OverflowError or OSError, a string where a dict belongs a TypeError).
MALFORMED = (AttributeError, KeyError, IndexError, TypeError, ValueError, OverflowError, OSError)


def parse_update(data: object, bot: Bot) -> Update | None:
    """The update in a decoded webhook body, or None if it is not one."""
    if not isinstance(data, dict):
        return None
    try:
        update = Update.de_json(data, bot)
    except MALFORMED:
        return None
    return update if update is not None and _is_id(update.update_id) else None


def incoming_message(update: Update, bot_id: int, bot_username: str) -> IncomingMessage | None:
    """The message a person wrote to the bot, or None for what the bot must ignore."""
    message = update.message
    if not isinstance(message, Message) or not isinstance(message.text, str):
        return None  # edits, channel posts, photos without text: not fetched or not answered
    user, chat = message.from_user, message.chat
    # Posts on behalf of a chat (channels, anonymous admins) have no user to talk to.
    if not _is_person(user) or message.sender_chat is not None or not _is_chat(chat):
        return None
    text = _addressed_text(message, message.text, bot_id, bot_username)
    if text is None:
        return None
    thread = message.message_thread_id
    return IncomingMessage(
        channel=CHANNEL,
        channel_user_id=str(user.id),
        text=text,
        username=_display_name(user),
        # update_ids count per bot: a new bot (token) on the same database restarts them.
        platform_message_id=f"{bot_id}:{update.update_id}",
        chat_id=str(chat.id),
        thread_id=str(thread) if _is_id(thread) else None,
        chat_kind=_chat_kind(message),
        # What a reply from the inbox quotes (with chat_id and, in a topic, thread_id).
        reply_to=str(message.message_id) if _is_id(message.message_id) else None,
    )


def feedback_event(update: Update) -> FeedbackEvent | None:
    """A person's 👍/👎 set on, or taken off, a message (message_reaction), or None for
    what is no rating: other emoji only, an anonymous reaction, a bot's. Whose message
    it was, the update does not say: the service finds out (only the bot's count)."""
    reaction = update.message_reaction
    if not isinstance(reaction, MessageReactionUpdated):
        return None
    user, chat, message_id = reaction.user, reaction.chat, reaction.message_id
    if not _is_person(user) or not _is_chat(chat) or not _is_id(message_id):
        return None
    old, new = _ratings(reaction.old_reaction), _ratings(reaction.new_reaction)
    if not old and not new:
        return None  # other emoji: no rating given or taken back
    post = PostRef(str(chat.id), str(message_id))
    return FeedbackEvent(CHANNEL, str(user.id), _rating_now(old, new), post)


def _ratings(reactions: object) -> list[Rating]:
    """The ratings among a user's reactions (👍, 👎), in order."""
    if not isinstance(reactions, tuple | list):
        return []
    found = (rating_of(r.emoji) for r in reactions if isinstance(r, ReactionTypeEmoji))
    return [rating for rating in found if rating is not None]


def _rating_now(old: list[Rating], new: list[Rating]) -> Rating | None:
    """The user's rating after the change: the one just added (a user with several
    reactions may keep both 👍 and 👎: the newest wins), else the one kept, else none."""
    added = [rating for rating in new if rating not in old]
    latest = added or new
    return latest[-1] if latest else None


def _chat_kind(message: Message) -> ChatKind:
    """A private chat; a forum topic (its own scope, apart from the group); or a group.
    A reply thread in an ordinary group is no topic: it stays in the group's scope."""
    if message.chat.type == ChatType.PRIVATE:
        return ChatKind.PRIVATE
    topic = message.is_topic_message is True and _is_id(message.message_thread_id)
    return ChatKind.THREAD if topic else ChatKind.GROUP


def _addressed_text(message: Message, text: str, bot_id: int, bot_username: str) -> str | None:
    """The text meant for the bot: all of a private chat, in groups only when addressed."""
    if message.chat.type == ChatType.PRIVATE:
        return text
    mention = f"@{bot_username}".lower()
    if _mentions(message, text, mention):
        name = rf"\s*(?<!\w){re.escape(mention)}\b[,:]?"  # "hey @bot, hi" -> "hey hi"
        return re.sub(name, "", text, flags=re.IGNORECASE).strip()
    if _replies_to_bot(message, bot_id):
        return text
    if text.startswith("/"):
        _, at, target = text.split(maxsplit=1)[0].partition("@")
        return text if not at or target.lower() == bot_username.lower() else None
    return None


def _mentions(message: Message, text: str, mention: str) -> bool:
    """Whether a mention entity names the bot.

    Entities count UTF-16 code units; an offset inside a surrogate pair, or a text
    with a lone surrogate, is read as best it can be rather than refused.
    """
    units = text.encode("utf-16-le", "surrogatepass")
    for entity in message.entities:
        if not isinstance(entity, MessageEntity) or entity.type != MessageEntity.MENTION:
            continue
        start, length = entity.offset, entity.length
        if not (_is_id(start) and _is_id(length)) or start < 0 or length < 0:
            continue
        found = units[2 * start : 2 * (start + length)].decode("utf-16-le", "replace")
        if found.lower() == mention:
            return True
    return False


def _replies_to_bot(message: Message, bot_id: int) -> bool:
    replied = message.reply_to_message
    if not isinstance(replied, Message) or not isinstance(replied.from_user, User):
        return False
    # In a forum topic every message "replies" to the topic's first message.
    implicit = message.is_topic_message is True and replied.message_id == message.message_thread_id
    return replied.from_user.id == bot_id and not implicit


def _display_name(user: User) -> str | None:
    """The @username, else the full name, as Telegram shows the person."""
    if isinstance(user.username, str) and user.username:
        return user.username
    names = [name for name in (user.first_name, user.last_name) if isinstance(name, str) and name]
    return " ".join(names) or None


def _is_person(user: Any) -> TypeGuard[User]:
    return isinstance(user, User) and _is_id(user.id) and user.is_bot is False


def _is_chat(chat: Any) -> TypeGuard[Chat]:
    return isinstance(chat, Chat) and _is_id(chat.id)


def _is_id(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
