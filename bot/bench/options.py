"""What a bench run is asked to do: the options of `bot bench` and their defaults.
Light on purpose: the command line shows these defaults in its --help."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PLATFORM_NAMES = ("telegram", "discord", "slack")  # bot/bench/platforms.py, PLATFORMS


@dataclass(frozen=True, slots=True)
class BenchOptions:
    users: int = 200
    messages: int = 20  # warm messages per user and round
    concurrency: int = 16
    history: int = 0
    rounds: int = 3
    baseline: bool = True
    loop: str = "asyncio"
    profile: Path | None = None  # write a pyinstrument profile of the warm phases here
    pgbouncer: bool = False  # also run the service behind a local PgBouncer, each round


@dataclass(frozen=True, slots=True)
class StreamingOptions:
    platforms: tuple[str, ...] = PLATFORM_NAMES
    concurrency: int = 16  # conversations at once
    replies: int = 5  # messages per conversation, each after the last reply
    first_token_seconds: float = 0.3
    tokens_per_second: float = 50.0
    reply_words: int = 60
    # A person reads a reply before writing again; the platforms' per-chat limits
    # (about a message a second, briefly more) assume as much.
    think_seconds: float = 1.0
