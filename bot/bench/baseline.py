"""The floor the service is compared with: a minimal hand-written asyncpg + redis-py loop.

Per message it does the storage work of one warm message and nothing else: one
pipelined Redis read (session hash, context list, rate counter, active set, channel
config), one Postgres transaction with two inserts and one update, one pipelined
Redis refresh (session, context). No locks, no de-duplication, no retries, no
fallbacks: whatever the service spends beyond this is its own overhead.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis

from bot.bench.driver import BenchUser, Meter, Sample, drive, message_text
from bot.bench.probes import PgProbe
from bot.cache.keys import RATE_WINDOW_SECONDS, Keys

_INSERT_MESSAGE = """
    INSERT INTO messages (id, conversation_id, role, content, timestamp, token_count,
                          channel_type, platform_message_id, model_used)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
_TOUCH = "UPDATE conversations SET last_activity = $1 WHERE id = $2"
_CREATE_USERS = """
    WITH new_users AS (
        INSERT INTO users (channel_type, channel_user_id, username)
        SELECT $1::text, name, name FROM unnest($2::text[]) AS name
        RETURNING id, channel_user_id
    )
    INSERT INTO conversations (user_id, channel_type)
    SELECT id, $1::text FROM new_users
    RETURNING id, user_id, (SELECT channel_user_id FROM new_users WHERE id = user_id)
"""


def _entry(role: str, content: str, ts: datetime) -> str:
    return json.dumps({"role": role, "content": content, "ts": ts.timestamp()})


class Baseline:
    def __init__(
        self,
        database_url: str,
        redis: Redis,
        keys: Keys,
        channel: str,
        probe: PgProbe,
        default_model: str,
    ) -> None:
        self.database_url = database_url
        self.redis = redis
        self.keys = keys
        self.channel = channel
        self.probe = probe
        self.default_model = default_model
        self.users: list[BenchUser] = []
        self._connections: asyncio.Queue[Any] = asyncio.Queue()
        self._all: list[Any] = []

    async def open(self, connections: int, users: list[str]) -> None:
        """`connections` Postgres connections (one per concurrent message), and the users,
        their conversations and sessions, written directly."""
        for _ in range(connections):
            connection = await asyncpg.connect(self.database_url, **self.probe.connect_kwargs())
            self.probe.adopt(connection)
            self._all.append(connection)
            self._connections.put_nowait(connection)
        # Open the Redis connections now, as the service's are by its cold phase.
        await asyncio.gather(*(self.redis.ping() for _ in range(connections)))
        rows = await self._all[0].fetch(_CREATE_USERS, self.channel, users)
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id, user_id, name in rows:
                self.users.append(BenchUser(name, user_id, conversation_id))
                session = self.keys.session(self.channel, name)
                pipe.hset(
                    session,
                    mapping={
                        "user_id": str(user_id),
                        "conversation_id": str(conversation_id),
                        "model": "",
                        "last_activity": time.time(),
                    },
                )
            pipe.set(self.keys.channel_config(self.channel), json.dumps({"settings": {}}))
            await pipe.execute()

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()

    async def run(self, round_no: int, per_user: int, concurrency: int, meter: Meter) -> Sample:
        async def send(user: BenchUser, number: int) -> None:
            text = message_text(user, number)
            await self.message(user, text, f"b{round_no}-{user.channel_user_id}-{number}")
            meter.replies["answer"] += 1

        return await meter.measure(
            "baseline", lambda: drive(self.users, per_user, concurrency, send)
        )

    async def message(self, user: BenchUser, text: str, platform_message_id: str) -> None:
        keys, channel = self.keys, self.channel
        assert user.user_id is not None and user.conversation_id is not None
        session_key = keys.session(channel, user.channel_user_id)
        context_key = keys.context(user.conversation_id)
        rate_key = keys.rate(user.user_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(session_key)
            pipe.lrange(context_key, 0, keys.context_messages - 1)
            pipe.incr(rate_key)
            pipe.expire(rate_key, RATE_WINDOW_SECONDS)
            pipe.zadd(keys.active(channel), {user.channel_user_id: time.time()})
            pipe.get(keys.channel_config(channel))
            session, context, *_ = await pipe.execute()
        history = [json.loads(item) for item in context]
        model = (session.get(b"model") or b"").decode() or self.default_model
        reply = f'You said: "{text}" ({len(history)} earlier messages in my context; model {model})'
        user_ts = datetime.now(UTC)
        reply_ts = datetime.now(UTC)
        await self._store(user.conversation_id, text, user_ts, reply, reply_ts, platform_message_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                session_key,
                mapping={
                    "user_id": str(user.user_id),
                    "conversation_id": str(user.conversation_id),
                    "model": "",
                    "last_activity": f"{time.time():.3f}",
                },
            )
            pipe.expire(session_key, keys.session_ttl)
            pipe.lpush(
                context_key, _entry("user", text, user_ts), _entry("assistant", reply, reply_ts)
            )
            pipe.ltrim(context_key, 0, keys.context_messages - 1)
            pipe.expire(context_key, keys.context_ttl)
            await pipe.execute()

    async def _store(
        self,
        conversation_id: uuid.UUID,
        text: str,
        user_ts: datetime,
        reply: str,
        reply_ts: datetime,
        platform_message_id: str,
    ) -> None:
        channel = self.channel
        connection = await self._connections.get()
        try:
            async with connection.transaction():
                await connection.execute(
                    _INSERT_MESSAGE, uuid.uuid4(), conversation_id, "user", text, user_ts,
                    len(text) // 4 + 1, channel, platform_message_id, None,
                )  # fmt: skip
                await connection.execute(
                    _INSERT_MESSAGE, uuid.uuid4(), conversation_id, "assistant", reply, reply_ts,
                    len(reply) // 4 + 1, channel, None, "echo",
                )  # fmt: skip
                await connection.execute(_TOUCH, reply_ts, conversation_id)
        finally:
            self._connections.put_nowait(connection)
