"""Each platform for `bot bench --streaming`: its emulator (bot/emulators) enforcing the
platform's rate limits, the settings that point the real adapter at it, how a
conversation's user writes a message, and what the emulator saw the bot write.

A conversation is one private chat (a Telegram private chat, a Discord DM, a Slack
DM), so that the bot's writes there belong to one reply at a time.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any, Protocol

import aiohttp
from pydantic import SecretStr

from bot.emulators import discord_api, slack_api, telegram_api

TELEGRAM_WRITES = frozenset({"sendMessage", "editMessageText", "sendMessageDraft"})
WEBHOOK_SECRET = "bench-webhook-secret"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Platform(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def settings(self) -> dict[str, Any]:
        """Settings overrides that point the adapter at the emulator (as typed values:
        they are not validated again)."""

    async def send(self, conversation: int, text: str) -> None:
        """The conversation's user writes `text` to the bot."""

    def writes(self, conversation: int, since: float) -> list[float]:
        """When (time.monotonic) the bot wrote in the conversation since `since`: each
        post, edit, draft or stream call the emulator answered."""

    def limited(self) -> int:
        """Calls the emulator answered 429."""

    def violations(self) -> list[str]:
        """What the SDK sent that the platform's spec does not allow."""


class Telegram:
    """In webhook mode, as a busy bot runs: Telegram posts each update at once. (Long
    polling waits up to REPOLL_DELAY for new updates while earlier ones are still being
    answered, docs/benchmarks.md.)"""

    name = "telegram"

    def __init__(self) -> None:
        self.api = telegram_api.FakeBotApi()
        self.api.enforce_limits()
        self._base = 5 * 10**9 + uuid.uuid4().int % 10**9  # fresh user ids per run
        self._hook = f"http://127.0.0.1:{_free_port()}/telegram"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await self.api.start()
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.api.close()

    def settings(self) -> dict[str, Any]:
        return {
            "telegram_bot_token": SecretStr(telegram_api.TOKEN),
            "telegram_api_base_url": self.api.base_url,
            "telegram_webhook_url": self._hook,
            "telegram_webhook_listen": "127.0.0.1",
            "telegram_webhook_port": int(self._hook.split(":")[2].split("/")[0]),
            "telegram_webhook_secret": SecretStr(WEBHOOK_SECRET),
        }

    async def send(self, conversation: int, text: str) -> None:
        assert self._session is not None
        person = telegram_api.user(self._base + conversation)
        update = telegram_api.private_update(self.api, person, text)
        headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
        async with self._session.post(self._hook, json=update, headers=headers) as answer:
            if answer.status != 200:
                raise RuntimeError(f"the Telegram webhook answered {answer.status}")

    def writes(self, conversation: int, since: float) -> list[float]:
        chat = self._base + conversation
        return [
            call.at
            for call in self.api.calls
            if call.method in TELEGRAM_WRITES
            and call.status == 200
            and call.params.get("chat_id") == chat
            and call.at >= since
        ]

    def limited(self) -> int:
        return sum(1 for call in self.api.calls if call.status == 429)

    def violations(self) -> list[str]:
        return list(self.api.problems)


class Discord:
    name = "discord"

    def __init__(self) -> None:
        self.api = discord_api.FakeDiscord()
        self.api.enforce_limits()
        self._people: dict[int, dict[str, Any]] = {}
        self._channels: dict[int, str] = {}

    async def start(self) -> None:
        await self.api.start()

    async def stop(self) -> None:
        await self.api.stop()

    def settings(self) -> dict[str, Any]:
        return {
            "discord_bot_token": SecretStr(discord_api.TOKEN),
            "discord_api_base_url": self.api.api_url,
        }

    async def send(self, conversation: int, text: str) -> None:
        person = self._people.setdefault(conversation, discord_api.user(f"user{conversation}"))
        channel = self._channels.setdefault(conversation, discord_api.snowflake())
        await self.api.push_message(self.api.message(person, text, channel_id=channel))

    def writes(self, conversation: int, since: float) -> list[float]:
        prefix = f"/channels/{self._channels.get(conversation)}/messages"
        return [
            call.at
            for call in self.api.calls
            if call.method in ("POST", "PATCH")
            and call.path.startswith(prefix)
            and call.status == 200
            and call.at >= since
        ]

    def limited(self) -> int:
        return self.api.limited

    def violations(self) -> list[str]:
        return list(self.api.violations)


class Slack:
    name = "slack"

    def __init__(self) -> None:
        self.api = slack_api.FakeSlack()
        self.api.enforce_limits()
        self._run = uuid.uuid4().hex[:6].upper()

    async def start(self) -> None:
        await self.api.start()

    async def stop(self) -> None:
        await self.api.stop()

    def settings(self) -> dict[str, Any]:
        return {
            "slack_bot_token": SecretStr(slack_api.BOT_TOKEN),
            "slack_app_token": SecretStr(slack_api.APP_TOKEN),  # Socket Mode
            "slack_api_base_url": self.api.api_url,
        }

    async def send(self, conversation: int, text: str) -> None:
        event = {
            "type": "message",
            "channel_type": "im",
            "user": f"U{self._run}{conversation:04d}",
            "text": text,
            "channel": self._channel(conversation),
            "ts": f"{time.time():.6f}",
            "client_msg_id": str(uuid.uuid4()),
        }
        await self.api.push(slack_api.event_envelope(event))

    def writes(self, conversation: int, since: float) -> list[float]:
        channel = self._channel(conversation)
        return [
            at
            for message in list(self.api.messages.values())
            if message.channel == channel
            for _, at, _ in message.writes
            if at >= since
        ]

    def limited(self) -> int:
        return len(self.api.limited)

    def violations(self) -> list[str]:
        return list(self.api.violations)

    def _channel(self, conversation: int) -> str:
        return f"D{self._run}{conversation:04d}"


PLATFORMS: dict[str, type[Telegram] | type[Discord] | type[Slack]] = {
    "telegram": Telegram,
    "discord": Discord,
    "slack": Slack,
}
