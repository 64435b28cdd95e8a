"""A `bot run --channels discord` worker SIGKILLed while the messages it received are
still being answered (issue 20, "Done when", Discord): Discord never delivers them
again, but each is in the inbox; a new worker takes them once their lease lapsed and
answers every one, once, in order per channel, stored once.

Real `bot run` processes on the local Discord (bot/emulators/discord_api.py: the
gateway pushes the messages, the REST calls are recorded) and the local LLM server,
which holds the first worker's replies until it is dead. Each channel (DMs, a server
channel, a thread) has one writer, so that its order is its writer's.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.emulators import discord_api
from bot.emulators.discord_api import FakeDiscord, Json
from bot.emulators.llm_api import LLMServer, Step
from tests.reliability.telegram_bot import Worker
from tests.support import fetch, messages_of, until, worker_env

DMS = 6  # writers in a DM each, besides one in the server channel and one in its thread
ANSWERED_FIRST = 2  # messages per channel answered before the kill
PENDING = 3  # messages per channel received, their replies pending, at the kill
QUICK, HELD = 0.05, 30.0  # s the LLM takes: before the kill; for the first worker's last
LEASE, SWEEP = 2.0, 0.5  # INBOX_LEASE_SECONDS, INBOX_SWEEP_SECONDS
ANSWERED_WITHIN = 20.0  # s after the second worker starts


@dataclass
class Writer:
    """One person writing to the bot in one channel; what they sent, in order."""

    author: Json
    channel_id: str
    guild: bool
    texts: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # the messages' ids, as sent
    pushed_at: dict[str, float] = field(default_factory=dict)  # text -> monotonic time


def writers(discord: FakeDiscord) -> list[Writer]:
    found = [Writer(discord_api.user(f"dm{i}"), discord_api.snowflake(), False) for i in range(DMS)]
    found.append(Writer(discord_api.user("in-channel"), discord.channel_id, True))
    found.append(Writer(discord_api.user("in-thread"), discord.thread_id, True))
    return found


async def write(discord: FakeDiscord, writer: Writer, number: int) -> None:
    """The writer's next message (its text unique, and no other's ending)."""
    text = f"[{writer.author['username']} #{number}]"
    me = discord.bot
    message = discord.message(
        writer.author, f"<@{me['id']}> {text}" if writer.guild else text,
        channel_id=writer.channel_id, guild=writer.guild,
        mentions=(me,) if writer.guild else (),
    )  # fmt: skip
    writer.texts.append(text)
    writer.ids.append(message["id"])
    writer.pushed_at[text] = time.monotonic()
    await discord.push_message(message)


def replies_in(discord: FakeDiscord, writer: Writer) -> list[str]:
    """The bot's finished messages in the writer's channel, in the order posted."""
    return [post["content"] for post in discord.posts(writer.channel_id)]


def ours(discord: FakeDiscord, people: list[Writer]) -> list[Json]:
    """The bot's finished messages in the writers' channels. (Not all: a worker sweeps
    what earlier tests of the run left in the inbox, and answers it here.)"""
    return [post for writer in people for post in discord.posts(writer.channel_id)]


def answer_of(text: str, reply: str) -> bool:
    """The LLM server's reply to `text` (in a shared thread the LLM sees 'name: text')."""
    return reply.startswith("LLM reply to: ") and reply.endswith(text)


class Watch:
    """When each text's reply was first seen whole on Discord."""

    def __init__(self, discord: FakeDiscord, people: list[Writer]) -> None:
        self.discord, self.people = discord, people
        self.answered_at: dict[str, float] = {}

    def look(self) -> None:
        now = time.monotonic()
        for writer in self.people:
            for reply in replies_in(self.discord, writer):
                for text in writer.texts:
                    if answer_of(text, reply):
                        self.answered_at.setdefault(text, now)

    async def run(self) -> None:
        while True:
            self.look()
            await asyncio.sleep(0.02)

    def all_answered(self) -> bool:
        self.look()
        return all(t in self.answered_at for w in self.people for t in w.texts)


async def in_inbox(engine: AsyncEngine, ids: list[str]) -> int:
    rows = await fetch(
        engine,
        """SELECT count(*) AS n FROM inbox
           WHERE channel_type = 'discord' AND platform_message_id = ANY(:ids)""",
        ids=ids,
    )
    return int(rows[0].n)


async def eventually_inbox(engine: AsyncEngine, ids: list[str], count: int, within: float) -> None:
    try:
        async with asyncio.timeout(within):
            while await in_inbox(engine, ids) != count:  # noqa: ASYNC110 - a query
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not {count} of the messages in the inbox in {within} s") from None


def bot_run_env(settings: Settings, discord: FakeDiscord, llm: LLMServer) -> dict[str, str]:
    return worker_env(settings) | {
        "DISCORD_BOT_TOKEN": discord_api.TOKEN,
        "DISCORD_API_BASE_URL": discord.api_url,
        "LLM_BASE_URL": llm.url,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "INBOX_LEASE_SECONDS": str(LEASE),
        "INBOX_SWEEP_SECONDS": str(SWEEP),
        # The dead worker's turns in Redis free soon, as its leases do.
        "LOCK_TTL_SECONDS": "3",
        "DELIVERY_LEASE_SECONDS": "3",
        "LOG_LEVEL": "INFO",  # what each worker took from the inbox, in its log
    }


async def connected(discord: FakeDiscord, sessions_before: int) -> None:
    await until(lambda: len(discord.sessions) > sessions_before, within=15, what="IDENTIFY")


@pytest.mark.timeout(120)
async def test_sigkill_with_replies_pending_every_received_message_answered_once(
    settings: Settings,
    engine: AsyncEngine,
    discord_server: FakeDiscord,
    llm: LLMServer,
    tmp_path: Path,
) -> None:
    env = bot_run_env(settings, discord_server, llm)
    first = Worker(env, tmp_path / "first.log", "discord")
    second = Worker(env, tmp_path / "second.log", "discord")
    people = writers(discord_server)
    watch = Watch(discord_server, people)
    watching = asyncio.create_task(watch.run())
    try:
        llm.default = Step(delay=QUICK)
        await first.start()
        await connected(discord_server, 0)
        for number in range(ANSWERED_FIRST):  # answered, then their events done with
            for writer in people:
                await write(discord_server, writer, number)
            await until(watch.all_answered, within=20, what="the first replies")
        answered_first = {t for w in people for t in w.texts}
        await eventually_inbox(engine, [i for w in people for i in w.ids], 0, within=5)

        llm.default = Step(delay=HELD)  # the first worker's replies stay at the LLM
        for number in range(ANSWERED_FIRST, ANSWERED_FIRST + PENDING):
            for writer in people:
                await write(discord_server, writer, number)
        pending = [i for w in people for i in w.ids[ANSWERED_FIRST:]]
        await eventually_inbox(engine, pending, len(pending), within=10)  # all received
        await until(lambda: llm.in_flight >= len(people), within=10, what="replies at the LLM")
        assert len(ours(discord_server, people)) == len(answered_first)  # none of them answered
        await first.kill()
        killed_at = time.monotonic()

        llm.default = Step(delay=QUICK)
        await second.start()
        await until(watch.all_answered, within=ANSWERED_WITHIN, what="every message answered")
        await eventually_inbox(engine, pending, 0, within=5)  # delivered: nothing comes again
        second_exit = await second.stop()
    finally:
        watching.cancel()
        await first.kill()
        await second.kill()
    watch.look()

    sent = sum(len(w.texts) for w in people)
    replies = Counter(r for w in people for r in replies_in(discord_server, w))
    duplicates = sum(n - 1 for n in replies.values())
    delays = [watch.answered_at[t] - w.pushed_at[t] for w in people for t in w.texts]
    late = [watch.answered_at[t] - killed_at for w in people for t in w.texts[ANSWERED_FIRST:]]
    print(
        f"\ndiscord SIGKILL with replies pending: sent {sent}, received by the first worker "
        f"{sent} (answered {len(answered_first)}, pending at the kill {len(pending)}), "
        f"answered {len(watch.answered_at)}, duplicates {duplicates}, "
        f"max delay {max(delays):.2f}s (the pending: answered {min(late):.2f}-{max(late):.2f}s "
        f"after the kill; lease {LEASE:g}s, sweep {SWEEP:g}s)"
    )

    assert second_exit == 0, (tmp_path / "second.log").read_text()
    for writer in people:
        replies_here = replies_in(discord_server, writer)
        # Each answered once, in the order written, and nothing else said there.
        assert len(replies_here) == len(writer.texts), (writer.texts, replies_here)
        assert all(map(answer_of, writer.texts, replies_here)), (writer.texts, replies_here)
        stored = [(row.role, row.content) for row in await messages_of(engine, writer.author["id"])]
        assert [content for _, content in stored] == [
            part for text, reply in zip(writer.texts, replies_here, strict=True)
            for part in (text, reply)  # stored without the mention
        ]  # fmt: skip
    late_posts = [p for p in ours(discord_server, people) if "message_reference" in p]
    assert len(late_posts) == len(pending)  # the pending ones, by send_to
    assert {str(p["message_reference"]["message_id"]) for p in late_posts} == set(pending)
    assert max(late) < LEASE + SWEEP + 10  # the process, its gateway, a lease, a sweep
