"""The console channel: lines from a stream in, replies out, through the same service."""

from __future__ import annotations

import asyncio
from typing import TextIO

from bot.domain import IncomingMessage
from bot.service import ConversationService

CHANNEL = "console"
PROMPT = "you> "


class ConsoleChannel:
    def __init__(
        self,
        service: ConversationService,
        user: str,
        stdin: TextIO,
        stdout: TextIO,
        interactive: bool,
    ) -> None:
        self.service = service
        self.user = user
        self.stdin = stdin
        self.stdout = stdout
        self.interactive = interactive

    async def run(self) -> None:
        """Answer line by line until the end of input (or Ctrl-D)."""
        if self.interactive:
            self._write(f"Chatting as {self.user}. Type /help for commands, Ctrl-D to quit.\n")
        while True:
            if self.interactive:
                self._write(PROMPT)
            line = await asyncio.to_thread(self.stdin.readline)
            if not line:
                break
            text = line.rstrip("\r\n")
            if self.interactive and not text.strip():
                continue  # a bare Enter at the prompt is not a message
            reply = await self.service.handle(
                IncomingMessage(CHANNEL, self.user, text, username=self.user)
            )
            if reply.text is not None:
                self._write(("bot> " if self.interactive else "") + reply.text + "\n")
        if self.interactive:
            self._write("\n")

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
