"""How a reply grows on Discord (bot/channels/live.py, Surface): a message posted and
edited as it grows, within Discord's 5 edits per 5 s per channel."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import discord

from bot.domain import PostRef

MESSAGE_LIMIT = 2000  # characters in one Discord message

# One discord.py call under the adapter's retry policy; the callable makes a fresh one.
Send = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class DiscordSurface:
    limit = MESSAGE_LIMIT
    rewrites = True

    def __init__(
        self,
        channel: discord.abc.Messageable,
        send: Send,
        on_sealed: Callable[[], None],
        reference: discord.MessageReference | None = None,
    ) -> None:
        self._channel = channel
        self._send = send
        self._on_sealed = on_sealed
        # The message the reply's first post answers, shown above it (a late reply).
        self._reference = reference
        self._posted: discord.Message | None = None
        self.posts: list[PostRef] = []  # the messages sealed, in order

    @property
    def where(self) -> Mapping[str, str] | None:
        posted = self._posted
        if posted is None:
            return None
        return {"channel_id": str(posted.channel.id), "message_id": str(posted.id)}

    async def show(self, text: str) -> None:
        if self._posted is None:
            self._posted = await self._post(text)
        else:
            await self._send(functools.partial(self._posted.edit, content=text))

    async def seal(self, text: str) -> None:
        if self._posted is None:
            sealed = await self._post(text)
        else:
            sealed = self._posted
            await self._send(functools.partial(sealed.edit, content=text))
        self._posted = None
        self.posts.append(PostRef(str(sealed.channel.id), str(sealed.id)))
        self._on_sealed()

    async def _post(self, text: str) -> discord.Message:
        """A new message; the first one as the reply to the referenced message."""
        reference, self._reference = self._reference, None
        posted: discord.Message = await self._send(
            functools.partial(self._channel.send, text, reference=reference)
        )
        return posted
