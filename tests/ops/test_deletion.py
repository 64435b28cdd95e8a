"""The one rule of every `bot ops` command that deletes data (bot/ops/deletion.py):
without a terminal it refuses unless --yes (exit 2); --dry-run counts and changes
nothing; on a terminal it shows the counts and asks, and only yes deletes."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.config import Settings
from bot.service import ConversationService
from tests.ops.conftest import Ops, execute, keys_of, seed
from tests.support import fetch, new_user
from tests.test_cli import PYTHON, ROOT

pytestmark = pytest.mark.timeout(30)

# Older than anything other tests age their messages to: a purge of ours alone.
AGED = "interval '3000 days'"
CUTOFF = "2900d"


class Terminal(io.StringIO):
    """Standard input as an operator at a terminal answers the question."""

    def isatty(self) -> bool:
        return True


@dataclass
class Target:
    argv: list[str]
    left: Callable[[], Awaitable[int]]  # how much of what the command deletes is there


Setup = Callable[[ConversationService, AsyncEngine, Redis, Keys], Awaitable[Target]]


async def _user(service: ConversationService, engine: AsyncEngine, *_: object) -> Target:
    user = new_user()
    await seed(service, user, "hello", "again")

    async def left() -> int:
        rows = await fetch(engine, "SELECT count(*) FROM users WHERE channel_user_id = :u", u=user)
        return int(rows[0][0])

    return Target(["user", "delete", "console", user], left)


async def _purge(service: ConversationService, engine: AsyncEngine, *_: object) -> Target:
    conversation = await seed(service, new_user(), "old", "older")
    sql = f"UPDATE messages SET timestamp = now() - {AGED} WHERE conversation_id = :c"
    await execute(engine, sql, c=conversation)

    async def left() -> int:
        sql = "SELECT count(*) FROM messages WHERE conversation_id = :c"
        return int((await fetch(engine, sql, c=conversation))[0][0])

    return Target(["purge", "--older-than", CUTOFF], left)


async def _flush_user(
    service: ConversationService, engine: AsyncEngine, redis: Redis, keys: Keys
) -> Target:
    user = new_user()
    await seed(service, user, "hello")

    async def left() -> int:
        return int(await redis.exists(keys.session("console", user)))

    return Target(["cache", "flush", "--user", f"console:{user}"], left)


async def _flush_all(
    service: ConversationService, engine: AsyncEngine, redis: Redis, keys: Keys
) -> Target:
    await seed(service, new_user(), "hello")

    async def left() -> int:
        return len({k for k in await keys_of(redis, keys) if keys.kind_of(k) == "session"})

    return Target(["cache", "flush", "--all"], left)


DELETING: dict[str, Setup] = {
    "user delete": _user,
    "purge": _purge,
    "cache flush --user": _flush_user,
    "cache flush --all": _flush_all,
}


@pytest.mark.parametrize("command", DELETING)
async def test_asks_refuses_counts_and_deletes_only_on_yes(
    ops: Ops,
    service: ConversationService,
    engine: AsyncEngine,
    redis: Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    target = await DELETING[command](service, engine, redis, keys)
    there = await target.left()
    assert there > 0

    unasked = await ops(*target.argv, "--json")  # pytest's stdin is no terminal
    assert unasked.code == 2 and "pass --yes" in unasked.err, unasked
    assert unasked.json()["exit_code"] == 2
    dry = await ops(*target.argv, "--dry-run", "--json")
    assert dry.code == 0 and dry.data["dry_run"] is True, dry
    assert str(there) in dry.out  # what would go, counted
    assert await target.left() == there

    monkeypatch.setattr(sys, "stdin", Terminal("no\n"))
    declined = await ops(*target.argv, "--json")
    assert declined.code == 1 and declined.json()["error"] == "not confirmed: nothing deleted"
    question = " ".join(declined.err.split())  # the prompt, then the error line
    assert question.startswith("Delete ") and "[y/N] bot ops: not confirmed" in question
    assert await target.left() == there

    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    confirmed = await ops(*target.argv, "--json")
    assert confirmed.code == 0, confirmed
    assert await target.left() == 0


@pytest.mark.parametrize("command", DELETING)
async def test_yes_deletes_without_a_terminal(
    ops: Ops, service: ConversationService, engine: AsyncEngine, redis: Redis, keys: Keys,
    command: str,
) -> None:  # fmt: skip
    target = await DELETING[command](service, engine, redis, keys)

    ran = await ops(*target.argv, "--yes")

    assert ran.code == 0, ran
    assert await target.left() == 0


async def test_help_of_each_deleting_command_states_the_rule(ops: Ops) -> None:
    for command in ("user delete", "purge", "cache flush"):
        shown = await ops(*command.split(), "--help")
        text = " ".join(shown.out.split())
        assert "--yes" in text and "--dry-run" in text, command
        assert "without one it refuses unless --yes" in text, command


async def bot_at_a_terminal(answer: str, *args: str, **env: str) -> tuple[int, str]:
    """`python -m bot ARGS` with a real terminal (a pty) as standard input, on which the
    operator has typed `answer`; its exit code and standard error."""
    leader, follower = os.openpty()
    try:
        os.write(leader, answer.encode())
        process = await asyncio.create_subprocess_exec(
            *(str(PYTHON if PYTHON.exists() else sys.executable), "-m", "bot", *args),
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=follower,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.timeout(120)  # real `python -m bot`s
async def test_purge_at_a_real_terminal_asks_and_deletes_only_on_yes(
    service: ConversationService, engine: AsyncEngine, settings: Settings
) -> None:
    """The issue's case: `ops purge --older-than …` deleted without asking."""
    assert settings.database_url is not None and settings.redis_url is not None
    env = {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
    }
    target = await _purge(service, engine)
    assert await target.left() == 4

    declined, asked = await bot_at_a_terminal("n\n", "ops", *target.argv, **env)
    assert declined == 1 and "Delete 4 messages older than" in " ".join(asked.split())
    assert await target.left() == 4
    confirmed, _ = await bot_at_a_terminal("y\n", "ops", *target.argv, **env)
    assert confirmed == 0
    assert await target.left() == 0
