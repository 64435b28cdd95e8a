"""What every channel adapter is, and the helpers they share.

An adapter only translates: platform event → IncomingMessage → Dispatcher, and
Reply → platform API call. All behaviour lives in the conversation service. Each adapter
takes its own options (bot/channels/options.py), not the bot's Settings.
"""

from __future__ import annotations

import abc
import json
import logging
import uuid

from aiohttp import web

from bot.cache.streams import Orphan
from bot.channels.dispatch import Dispatcher
from bot.domain import IncomingMessage
from bot.errors import WebhookRefused


class ChannelAdapter(abc.ABC):
    """One platform connection, supervised by the worker."""

    name: str
    finite = False  # True for a channel whose end ends the worker (the console)
    resumes = False  # True when it can answer an event from the inbox (send_to)

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.log = logging.getLogger(f"bot.channels.{self.name}")
        dispatcher.metrics.track_channel(self.name)

    @abc.abstractmethod
    async def run(self) -> None:
        """Connect and handle events until stop() is called; raise if the connection dies.

        The worker restarts a run that raised, with backoff.
        """

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop taking new events and close the SDK clients. Idempotent."""

    async def end_stream(self, orphan: Orphan, note: str) -> None:
        """End a reply that a dead worker left streaming here (bot/cache/streams.py) with
        `note`, so that it does not look complete. A channel that shows nothing lasting
        while a reply streams books nothing, and has nothing to end."""
        return None

    async def resume(self, message: IncomingMessage) -> None:
        """Answer an event taken from the inbox (its worker died, or its reply was
        deferred): no platform object is in hand, so the reply goes to the place the
        message names (`send_to`), whole. A message an earlier handling stored without
        its reply gets its reply stored to it by the service (`_reply_to_stored`)."""
        reply = await self.dispatcher.handle(message)
        if reply.text is None or await self.send_to(message, reply.text, reply.message_id):
            self.dispatcher.delivered(message, reply)

    async def send_to(
        self, message: IncomingMessage, text: str, reply_id: uuid.UUID | None = None
    ) -> bool:
        """Send `text` as the reply to `message`, from its plain data alone; False if it
        could not be delivered now (the inbox tries again after a lease). A channel
        that cannot (`resumes` False) is never given an event by the sweep. `reply_id`:
        the stored reply `text` is, for ratings of the posts that show it (feedback)."""
        raise NotImplementedError(f"{self.name} cannot answer from the inbox")

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether the platform connection is up (for /readyz)."""


def break_at(text: str, limit: int, after: int = 0) -> int:
    """Where to cut `text` (longer than `limit`) so that the part before fits: at a line
    break, else a word break, in the second half of the limit and not before `after`;
    else at the limit."""
    floor = max(limit // 2 + 1, after)
    for separator in ("\n", " "):
        cut = text.rfind(separator, floor, limit + 1)
        if cut >= 0:
            return cut
    return limit


def split_text(text: str, limit: int) -> list[str]:
    """Cut a reply into parts of at most `limit` characters, at line or word breaks
    where possible, so that every part can be sent as one platform message."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = break_at(rest, limit)
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n ") if cut < len(rest) else ""
    if rest or not parts:
        parts.append(rest)
    return [part for part in parts if part] or [text[:limit]]


def webhook_application(max_body_bytes: int) -> web.Application:
    """An aiohttp app that never reads more of a request body than the limit allows."""
    return web.Application(client_max_size=max_body_bytes)


def check_declared_size(request: web.Request, limit: int) -> None:
    """413 for a Content-Length over `limit`, before a byte of the body is read."""
    if request.content_length is not None and request.content_length > limit:
        raise WebhookRefused(413, f"request body over {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 when it is over `limit` bytes.

    A body without a Content-Length is cut off by the app's client_max_size (set by
    webhook_application) as it arrives.
    """
    check_declared_size(request, limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise WebhookRefused(413, f"request body over {limit} bytes") from None


def check_media_type(request: web.Request, accepted: frozenset[str]) -> None:
    if request.content_type not in accepted:
        raise WebhookRefused(415, f"content type must be one of {', '.join(sorted(accepted))}")


def parse_json(body: bytes) -> object:
    """A UTF-8 JSON document, or 400: not UTF-8, not JSON, or nested too deep to parse."""
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise WebhookRefused(400, "request body is not UTF-8 JSON") from None


def refusal(exc: WebhookRefused) -> web.Response:
    return web.json_response({"ok": False, "error": exc.reason}, status=exc.status)
