"""How a reply grows on Telegram (bot/channels/live.py, Surface).

In a private chat, as a draft (sendMessageDraft: an ephemeral preview that Telegram
animates), made a message of the chat by sendMessage once sealed. In a group or forum
topic, where drafts do not exist, as a message posted (quoting the one answered) and
edited as it grows (editMessageText).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from telegram import Message
from telegram.constants import ChatType, MessageLimit

from bot.domain import PostRef

# One Bot API request under the adapter's retry policy; the callable makes a fresh one.
Send = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


def surface_for(message: Message, send: Send, on_sealed: Callable[[], None]) -> Any:
    """The surface for a reply to `message`: a draft in a private chat, else edits."""
    if message.chat.type == ChatType.PRIVATE:
        return DraftSurface(message, send, on_sealed)
    return EditSurface(message, send, on_sealed)


def post_of(message: Message) -> PostRef:
    """A message the bot sent, as a reaction on it names it: its chat, its id there."""
    return PostRef(str(message.chat_id), str(message.message_id))


class DraftSurface:
    limit = MessageLimit.MAX_TEXT_LENGTH
    rewrites = True

    def __init__(self, message: Message, send: Send, on_sealed: Callable[[], None]) -> None:
        self._message = message
        self._send = send
        self._on_sealed = on_sealed
        self._draft = secrets.randbelow(2**30) + 1  # non-zero; one per message of the reply
        self.posts: list[PostRef] = []  # the messages sealed, in order

    @property
    def where(self) -> Mapping[str, str] | None:
        return None  # a draft vanishes with the worker that shows it

    async def show(self, text: str) -> None:
        bot, chat = self._message.get_bot(), self._message.chat_id
        await self._send(partial(bot.send_message_draft, chat, self._draft, text))

    async def seal(self, text: str) -> None:
        sealed = await self._send(partial(self._message.reply_text, text, do_quote=False))
        self.posts.append(post_of(sealed))
        self._draft += 1  # the next message of the reply is a draft of its own
        self._on_sealed()


class EditSurface:
    limit = MessageLimit.MAX_TEXT_LENGTH
    rewrites = True

    def __init__(self, message: Message, send: Send, on_sealed: Callable[[], None]) -> None:
        self._message = message
        self._send = send
        self._on_sealed = on_sealed
        self._posted: Message | None = None
        self._quote = True  # the first message says which one it answers
        self.posts: list[PostRef] = []  # the messages sealed, in order

    @property
    def where(self) -> Mapping[str, str] | None:
        posted = self._posted
        if posted is None:
            return None
        return {"chat_id": str(posted.chat_id), "message_id": str(posted.message_id)}

    async def show(self, text: str) -> None:
        if self._posted is None:
            self._posted = await self._post(text)
        else:
            await self._send(partial(self._posted.edit_text, text))

    async def seal(self, text: str) -> None:
        if self._posted is None:
            sealed = await self._post(text)
        else:
            sealed = self._posted
            await self._send(partial(sealed.edit_text, text))
        self._posted = None
        self.posts.append(post_of(sealed))
        self._on_sealed()

    async def _post(self, text: str) -> Message:
        reply = partial(
            self._message.reply_text,
            text,
            do_quote=self._quote,
            allow_sending_without_reply=True,
        )
        self._quote = False
        posted: Message = await self._send(reply)
        return posted
