"""Simulated users: the scheduling both runs share, and the run through the real service.

`concurrency` messages are in flight at any time, each from a different user (a user
sends the next message only after the reply to the previous one, like a person, so
no message waits for its own user's lock). Every phase is timed from the first
message sent to the last reply, and every message's latency is its `handle` call.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bot.bench.probes import PgProbe, RedisProbe, command_stats
from bot.domain import ChatKind, IncomingMessage, ReplyKind
from bot.service import ConversationService
from bot.tallies import Tally

_FILLER = (
    "could you tell me a bit more about that, and what you would suggest I try next "
    "if the first idea does not work out for me this time"
)


@dataclass(slots=True)
class BenchUser:
    channel_user_id: str
    user_id: uuid.UUID | None = None
    conversation_id: uuid.UUID | None = None
    # Where they write: their DM, or a group chat (and a thread of it) with others.
    kind: ChatKind = ChatKind.PRIVATE
    chat_id: str | None = None
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    latencies: list[float]


@dataclass(slots=True)
class Sample:
    """What one or more runs of one phase measured; samples of the same phase add up."""

    phase: str
    messages: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (the client side: service or baseline)
    latencies: list[float] = field(default_factory=list)
    postgres: Counter[str] = field(default_factory=Counter)
    redis: Counter[str] = field(default_factory=Counter)  # client: round_trips, calls
    redis_commands: Counter[str] = field(default_factory=Counter)  # server, by command
    stats: Counter[Tally] = field(default_factory=Counter)  # the service's tallies
    replies: Counter[str] = field(default_factory=Counter)
    throughputs: list[float] = field(default_factory=list)  # messages/s of each run

    def add(self, other: Sample) -> None:
        self.messages += other.messages
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds
        self.latencies += other.latencies
        self.postgres += other.postgres
        self.redis += other.redis
        self.redis_commands += other.redis_commands
        self.stats += other.stats
        self.replies += other.replies
        self.throughputs += other.throughputs


def message_text(user: BenchUser, number: int) -> str:
    """A chat-sized message (about 100 characters), different for every user and turn."""
    return f"message {number} from {user.channel_user_id}: {_FILLER}"[:100]


async def drive(
    users: Sequence[BenchUser],
    per_user: int,
    concurrency: int,
    send: Callable[[BenchUser, int], Awaitable[None]],
) -> Timing:
    """Send `per_user` messages for every user, `concurrency` at a time, one per user."""
    queue = deque((user, 0) for user in users)
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            user, number = queue.popleft()
            started = time.perf_counter()
            await send(user, number)
            latencies.append(time.perf_counter() - started)
            if number + 1 < per_user:
                queue.append((user, number + 1))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(users))))))
    return Timing(time.perf_counter() - started, latencies)


class Meter:
    """Takes every counter before and after a phase; the difference is the phase's."""

    def __init__(
        self,
        postgres: PgProbe,
        redis: RedisProbe,
        control: Redis,
        stats: Counter[Tally] | None = None,
    ) -> None:
        self.postgres = postgres
        self.redis = redis
        self.control = control
        self.stats = stats if stats is not None else Counter()
        self.replies: Counter[str] = Counter()

    async def measure(self, phase: str, run: Callable[[], Awaitable[Timing]]) -> Sample:
        server = await command_stats(self.control)
        pg, rd, stats = self.postgres.snapshot(), self.redis.snapshot(), Counter(self.stats)
        replies = Counter(self.replies)
        cpu = time.process_time()
        timing = await run()
        cpu = time.process_time() - cpu
        sample = Sample(
            phase,
            messages=len(timing.latencies),
            seconds=timing.seconds,
            cpu_seconds=cpu,
            latencies=timing.latencies,
            postgres=self.postgres.snapshot() - pg,
            redis=self.redis.snapshot() - rd,
            stats=Counter(self.stats) - stats,
            replies=Counter(self.replies) - replies,
            throughputs=[len(timing.latencies) / timing.seconds if timing.seconds else 0.0],
        )
        sample.redis_commands = await command_stats(self.control) - server
        return sample


class ServiceDriver:
    """Users talking to the real ConversationService (with a no-cost responder)."""

    def __init__(
        self,
        service: ConversationService,
        users: list[BenchUser],
        channel: str,
        meter: Meter,
        *,
        inbox: bool = True,
    ) -> None:
        self.service = service
        self.users = users
        self.channel = channel
        self.meter = meter
        # Each message kept in the inbox first, as an adapter does before acknowledging
        # it (bot/inbox.py); without, the service alone, as before the inbox.
        self.inbox = inbox
        self.tag = "" if inbox else "n"  # event ids of their own: never duplicates

    async def cold(self, round_no: int, concurrency: int) -> Sample:
        """One message per user, every one of them missing the cache."""
        return await self.meter.measure(
            "cold", lambda: self._drive(1, concurrency, self._sender(f"c{round_no}"))
        )

    async def unmeasured(self, per_user: int, concurrency: int) -> None:
        """Messages that count in no phase: to bring the service to where a worker that
        has been running is (pools full, each connection's statements prepared)."""
        await drive(self.users, per_user, concurrency, self._sender("u"))

    async def warm(self, round_no: int, per_user: int, concurrency: int) -> Sample:
        return await self.meter.measure(
            "warm", lambda: self._drive(per_user, concurrency, self._sender(f"w{round_no}"))
        )

    async def _drive(
        self, per_user: int, concurrency: int, send: Callable[[BenchUser, int], Awaitable[None]]
    ) -> Timing:
        """A phase, and the inbox's deletes of its delivered events (batched, they would
        otherwise land in the next phase's count)."""
        timing = await drive(self.users, per_user, concurrency, send)
        if self.inbox:
            await self.service.inbox.flush()
        return timing

    def _sender(self, tag: str) -> Callable[[BenchUser, int], Awaitable[None]]:
        async def send(user: BenchUser, number: int) -> None:
            message = IncomingMessage(
                self.channel,
                user.channel_user_id,
                message_text(user, number),
                username=user.channel_user_id,
                platform_message_id=f"{self.tag}{tag}-{user.channel_user_id}-{number}",
                chat_id=user.chat_id,
                thread_id=user.thread_id,
                chat_kind=user.kind,
            )
            if self.inbox:
                await self.service.receive(message)
            reply = await self.service.handle(message)
            self.service.delivered(message, reply.kind)  # as an adapter does once the reply is sent
            self.meter.replies[reply.kind.value] += 1
            if reply.kind is ReplyKind.ANSWER:
                user.conversation_id = reply.conversation_id

        return send
