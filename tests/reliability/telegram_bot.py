"""A real `bot run --channels telegram` process on the local Telegram Bot API
(bot/emulators/telegram_api.py) and the local LLM server, and what the scenarios read
off them: the replies sent, the times they were sent, their order per chat.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

from bot.config import Settings
from bot.emulators.llm_api import LLMServer
from bot.emulators.telegram_api import TOKEN, FakeBotApi
from tests.support import ROOT, worker_env

EXIT_WITHIN = 30.0


class Worker:
    """A `bot run` process of one channel (Telegram here; the Slack and Discord scenarios
    name theirs); its log goes to a file, shown when it exits badly."""

    def __init__(self, env: dict[str, str], log: Path, channel: str = "telegram") -> None:
        self.env = env
        self.log = log
        self.channel = channel
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", "--channels", self.channel,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, cwd=ROOT,
            )  # fmt: skip

    async def stop(self) -> int:
        """SIGTERM, then the exit code (killed, and failed, if it takes too long)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), EXIT_WITHIN)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"no exit in {EXIT_WITHIN} s:\n{self.log.read_text()}") from None

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def reply_to(text: str) -> str:
    """What the local LLM answers to `text`."""
    return f"LLM reply to: {text}"


def replies(telegram: FakeBotApi) -> Counter[str]:
    """The bot's finished messages, by text: how many times each was sent."""
    return Counter(call["text"] for call in telegram.sent)


def first_sent_at(telegram: FakeBotApi) -> dict[str, float]:
    """When each text was first sent (time.monotonic(), the sendMessage call's)."""
    found: dict[str, float] = {}
    for call in telegram.calls_of("sendMessage"):
        found.setdefault(call.params["text"], call.at)
    return found


def sent_in_chat(telegram: FakeBotApi, chat_id: int) -> list[str]:
    """The texts the bot sent to one chat, in the order it sent them."""
    return [m["text"] for m in telegram.sent if m["chat_id"] == chat_id]


def bot_run_env(
    settings: Settings, telegram: FakeBotApi, llm: LLMServer, **more: str
) -> dict[str, str]:
    """The environment of a `bot run` on the local Telegram and LLM, HTTP on any port."""
    return worker_env(settings) | {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        "LLM_BASE_URL": llm.url,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        **more,
    }
