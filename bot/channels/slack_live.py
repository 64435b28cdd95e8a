"""How a reply grows on Slack (bot/channels/live.py, Surface).

As a stream, Slack's own way (chat.startStream, chat.appendStream, chat.stopStream):
Slack shows the message as being written until it is stopped, so no cursor is sent;
each call appends what is new since the last one. A workspace that refuses streams
(an older plan, a grid policy, a token without the feature) gets a message posted and
updated as it grows (chat.postMessage, chat.update), for this reply and every later
one: the adapter is told once and remembers.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.channels.live import CURSOR
from bot.channels.slack_events import escape
from bot.channels.slack_feedback import feedback_blocks
from bot.domain import PostRef
from bot.errors import PlatformRejected

# Slack's advice for one message's text; a streamed message is held to it as well.
TEXT_LIMIT = 4000

# One Web API call under the adapter's retry policy, its errors mapped to ours; the
# callable makes a fresh request.
Send = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Place:
    """Where the reply goes: the thread of the message answered, and (in a channel)
    whom Slack's stream is for."""

    channel: str
    thread_ts: str | None
    recipient_user_id: str | None = None  # Slack wants both in a channel, neither in a DM
    recipient_team_id: str | None = None


class SlackSurface:
    limit = TEXT_LIMIT
    rewrites = False  # a stream is only ever appended to

    def __init__(
        self,
        client: AsyncWebClient,
        place: Place,
        send: Send,
        *,
        stream: bool,
        on_refused: Callable[[PlatformRejected], None],
        on_sealed: Callable[[], None],
    ) -> None:
        self._client = client
        self._place = place
        self._send = send
        self._stream = stream  # try a stream first (a stream is always a thread reply)
        self._on_refused = on_refused
        self._on_sealed = on_sealed
        self._stream_ts: str | None = None  # the stream being written
        self._sent = ""  # what it holds so far
        self._posted_ts: str | None = None  # else the message posted, being updated
        self.posts: list[PostRef] = []  # the messages sealed, in order
        # The stored reply being shown, once known: its messages are sealed with the
        # feedback buttons (bot/channels/slack_feedback.py). None: no buttons.
        self.rated: uuid.UUID | None = None

    @property
    def where(self) -> Mapping[str, str] | None:
        channel = self._place.channel
        if self._stream_ts is not None:
            return {"channel": channel, "ts": self._stream_ts, "stream": "yes"}
        return None if self._posted_ts is None else {"channel": channel, "ts": self._posted_ts}

    async def show(self, text: str) -> None:
        if self._stream_ts is not None:
            await self._append(self._stream_ts, text.removesuffix(CURSOR))
        elif self._posted_ts is None and self._stream and self._place.thread_ts is not None:
            await self._start(self._place.thread_ts, text.removesuffix(CURSOR))
        else:
            await self._put(text)

    async def seal(self, text: str) -> None:
        if self._stream_ts is not None:
            await self._stop(self._stream_ts, text)
        else:
            await self._put(text, sealing=True)
        sealed = self._stream_ts or self._posted_ts
        if sealed is not None:
            self.posts.append(PostRef(self._place.channel, sealed))
        self._stream_ts, self._sent, self._posted_ts = None, "", None
        self._on_sealed()

    async def _start(self, thread_ts: str, text: str) -> None:
        place = self._place
        start = partial(
            self._client.chat_startStream,
            channel=place.channel,
            thread_ts=thread_ts,
            markdown_text=escape(text),
            recipient_user_id=place.recipient_user_id,
            recipient_team_id=place.recipient_team_id,
        )
        try:
            started = await self._send(start)
        except PlatformRejected as exc:  # this workspace does not stream: post and update
            self._stream = False
            self._on_refused(exc)
            await self._put(text + CURSOR)
            return
        self._stream_ts, self._sent = str(started["ts"]), text

    async def _append(self, ts: str, text: str) -> None:
        new = escape(text[len(self._sent) :])
        if new:
            channel = self._place.channel
            await self._send(
                partial(self._client.chat_appendStream, channel=channel, ts=ts, markdown_text=new)
            )
            self._sent = text

    async def _stop(self, ts: str, text: str) -> None:
        new = escape(text[len(self._sent) :]) or None  # None: nothing more to append
        channel = self._place.channel
        stop = partial(self._client.chat_stopStream, channel=channel, ts=ts, markdown_text=new)
        if self.rated is not None:  # shown under the streamed text
            stop = partial(stop, blocks=feedback_blocks(self.rated))
        await self._send(stop)

    async def _put(self, text: str, *, sealing: bool = False) -> None:
        """Post the message, or (once posted) update it to `text`. Sealed with the
        feedback buttons, its text goes in a block above them (with blocks, Slack shows
        `text` only in notifications)."""
        channel, ts, text = self._place.channel, self._posted_ts, escape(text)
        blocks = None
        if sealing and self.rated is not None:
            blocks = [{"type": "markdown", "text": text}, *feedback_blocks(self.rated)]
        if ts is None:
            thread = self._place.thread_ts
            post = partial(self._client.chat_postMessage, channel=channel, thread_ts=thread)
            self._posted_ts = str((await self._send(partial(post, text=text, blocks=blocks)))["ts"])
        else:
            update = partial(self._client.chat_update, channel=channel, ts=ts, blocks=blocks)
            await self._send(partial(update, text=text))
