"""The console channel: lines from a stream in, replies out, through the same service."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import AsyncIterator
from typing import TextIO

from bot.channels.base import ChannelAdapter
from bot.channels.dispatch import Dispatcher
from bot.channels.options import ConsoleOptions
from bot.domain import IncomingMessage
from bot.errors import ShuttingDown

CHANNEL = "console"
PROMPT = "you> "
MAX_LINE_BYTES = 16 * 1024 * 1024  # far above MAX_MESSAGE_CHARS: the service refuses, not us


class ConsoleChannel(ChannelAdapter):
    name = CHANNEL
    finite = True

    def __init__(
        self, options: ConsoleOptions, dispatcher: Dispatcher, stdin: TextIO, stdout: TextIO
    ) -> None:
        super().__init__(dispatcher)
        self.user = options.user
        self.stdin = stdin
        self.stdout = stdout
        self.interactive = options.interactive
        self.log_file = options.log_file
        self._running = False

    @property
    def connected(self) -> bool:
        return self._running

    async def run(self) -> None:
        """Answer line by line until the end of input (or Ctrl-D)."""
        self._running = True
        if self.interactive:
            self._write(f"Chatting as {self.user}. Type /help for commands, Ctrl-D to quit.\n")
            if self.log_file is not None:
                self._write(f"(The log goes to {self.log_file}.)\n")
            self._write(PROMPT)
        try:
            async for line in _lines(self.stdin):
                await self._answer(line.rstrip("\r\n"))
                if self.interactive:
                    self._write(PROMPT)
        except ShuttingDown:
            pass
        finally:
            self._running = False
        if self.interactive:
            self._write("\n")

    async def _answer(self, text: str) -> None:
        if self.interactive and not text.strip():
            return  # a bare Enter at the prompt is not a message
        prefix = "bot> " if self.interactive else ""
        shown: list[str] = []

        async def show(piece: str) -> None:  # the reply as it is written, on the same line
            self._write(piece if shown else prefix + piece)
            shown.append(piece)

        message = IncomingMessage(CHANNEL, self.user, text, username=self.user)
        reply = await self.dispatcher.handle(message, show)
        streamed = "".join(shown)
        if reply.text is None:
            self._write("\n" if shown else "")
        elif shown and reply.text.startswith(streamed):
            self._write(reply.text[len(streamed) :] + "\n")  # the rest: a note, or nothing
        else:  # not what was streamed (an apology after a failure): on a line of its own
            self._write(("\n" if shown else "") + prefix + reply.text + "\n")
        if reply.text is not None:
            self.dispatcher.sent(CHANNEL)

    async def stop(self) -> None:
        self._running = False

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


async def _lines(stream: TextIO) -> AsyncIterator[str]:
    """Lines of the stream, read without blocking the loop (and so cancellable)."""
    lines = _pipe_lines(stream) if _pollable(stream) else _thread_lines(stream)
    async for line in lines:
        yield line


def _pollable(stream: TextIO) -> bool:
    """Whether the loop can watch the stream: a terminal, pipe or socket.

    Regular files and other devices (/dev/null) cannot be registered with epoll.
    """
    mode = os.fstat(stream.fileno()).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stream.isatty()


async def _pipe_lines(stream: TextIO) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), stream
    )
    try:
        while line_bytes := await reader.readline():
            yield line_bytes.decode("utf-8", errors="replace")
    finally:
        transport.close()


async def _thread_lines(stream: TextIO) -> AsyncIterator[str]:
    """Lines read by a daemon thread: one blocked in a read never holds up the exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | OSError] = asyncio.Queue(maxsize=16)
    reader = threading.Thread(
        target=_read_lines, args=(stream, loop, queue), name="console-input", daemon=True
    )
    reader.start()
    while True:
        item = await queue.get()
        if isinstance(item, OSError):
            raise item
        if not item:
            return
        yield item


def _read_lines(
    stream: TextIO, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | OSError]
) -> None:
    binary = getattr(stream, "buffer", None)  # decoded here, like the pipe's lines

    def hand_over(item: str | OSError) -> bool:
        # Waits while the queue is full, so a long file is not read into memory at once.
        try:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        except RuntimeError:  # the loop is closed: the chat has ended, nobody reads on
            return False
        return True

    try:
        while True:
            raw = binary.readline() if binary is not None else stream.readline()
            line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
            if not hand_over(line) or not line:
                return
    except OSError as exc:
        hand_over(exc)
