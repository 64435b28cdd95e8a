"""The Redis side of `bot ops`: every read and write an operator's command makes.

Keys are named only by Keys and touched only under this deployment's prefix. Every
call goes through a one-shot RedisGuard (bounded in time, a failure raised as
CacheUnavailable); long scans are bounded per SCAN call and report progress. What
comes back is plain data for bot/ops to render.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from bot.cache import keys as kinds
from bot.cache import scripts
from bot.cache.codec import (
    FENCE_FIELD,
    SUMMARY_FIELD,
    encode_context,
    encode_session,
    text_of,
)
from bot.cache.deployment import deployment_problem
from bot.cache.events import EventClaim
from bot.cache.guard import RedisGuard, fault_of
from bot.cache.keys import Keys
from bot.cache.lua import ScriptPipelines
from bot.domain import DM_SCOPE, ActiveSession
from bot.errors import CacheUnavailable

Progress = Callable[[int], None]  # called with how many items were just done

PINGS = 3
SCAN_BATCH = 1000  # keys a SCAN call looks at, when looking for one
# What `cache flush --all` deletes: copies of Postgres rows and state the next message
# rebuilds. STATE_KINDS only with --include-state: rate counters (a user could exceed
# the limit for a minute), event claims (a redelivered event would be stored again)
# and the workers' stats counters (the totals restart). `lock` keys are never
# deleted: they order messages in flight and expire within LOCK_TTL_SECONDS.
CACHE_KINDS = (
    *(kinds.SESSION, kinds.CONTEXT, kinds.CHANNEL_CONFIG, kinds.CHAT_CONFIG),
    *(kinds.FEATURES, kinds.BLOCKED, kinds.ACTIVE, kinds.AB_TEST),
)
STATE_KINDS = (kinds.RATE, kinds.DEDUP, kinds.STATS)


@dataclass(frozen=True, slots=True)
class RedisServer:
    """A health check's view of the server."""

    latency_ms: float  # median of a few pings, after one that may open the connection
    version: str | None
    used_memory: int | None
    used_memory_human: str | None
    maxmemory: int | None
    maxmemory_policy: str | None
    evicted_keys: int | None  # since the server started
    problem: str | None  # why the bot cannot run on this Redis (a cluster node, a replica)


@dataclass(frozen=True, slots=True)
class CachedSession:
    scope: str  # Scope.key
    key: str
    fields: dict[str, str]  # empty: not cached
    ttl: int | None


@dataclass(frozen=True, slots=True)
class CachedUser:
    """What Redis holds about one user."""

    sessions: tuple[CachedSession, ...]  # one per scope asked about, the DM first
    rate_key: str
    rate_count: int | None
    rate_ttl: int | None
    active_since: float | None  # unix time of their last message in the active window
    contexts: dict[uuid.UUID, list[bytes]]  # raw items of the cached contexts


@dataclass(frozen=True, slots=True)
class CachedContext:
    key: str
    items: list[bytes]
    ttl: int | None


@dataclass(frozen=True, slots=True)
class CachedEvent:
    """A platform event's claim (bot/cache/events.py) as Redis holds it."""

    key: str
    raw: str | None  # the value as stored; None: no claim
    claim: EventClaim | None  # None: none, or a value no version of the bot writes
    ttl: int | None


@dataclass(slots=True)
class FlushAll:
    deleted: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)  # keys of this deployment left, by kind


class CacheAdmin:
    def __init__(self, redis: Redis, keys: Keys, guard: RedisGuard) -> None:
        self.redis = redis
        self.keys = keys
        self.guard = guard
        self._warm = scripts.WARM.bind(redis)
        self._pipelines = ScriptPipelines(redis, [self._warm])

    # --- health and stats -------------------------------------------------------------

    async def server(self) -> RedisServer:
        await self.guard.run(self.redis.ping)  # may open the connection: not timed
        times = []
        for _ in range(PINGS):
            start = time.perf_counter()
            await self.guard.run(self.redis.ping)
            times.append((time.perf_counter() - start) * 1000)
        info: dict[str, Any] = await self.guard.run(self.redis.info)  # the default sections
        return RedisServer(
            latency_ms=round(statistics.median(times), 3),
            version=info.get("redis_version"),
            used_memory=info.get("used_memory"),
            used_memory_human=info.get("used_memory_human"),
            maxmemory=info.get("maxmemory"),
            maxmemory_policy=info.get("maxmemory_policy"),
            evicted_keys=info.get("evicted_keys"),
            problem=deployment_problem(info, self.keys.cluster) or await self._refuses_writes(),
        )

    async def _refuses_writes(self) -> str | None:
        """What a write says of Redis (a full one refuses it), or None if it took it: a
        key that expires in a second, the one write of a health check."""
        try:
            await self.guard.run(lambda: self.redis.set(self.keys.health_probe(), 1, px=1000))
        except CacheUnavailable as exc:
            fault = fault_of(exc.__cause__)
            if fault is None:
                raise
            return fault.meaning
        return None

    async def memory(self) -> dict[str, Any]:
        info: dict[str, Any] = await self.guard.run(lambda: self.redis.info("memory"))
        return info

    async def ping(self) -> None:
        """Return once Redis answers; CacheUnavailable says why it does not."""
        await self.guard.run(self.redis.ping)

    async def reachable(self) -> bool:
        try:
            await self.ping()
        except CacheUnavailable:
            return False
        return True

    async def key_kinds(self, progress: Progress, batch: int) -> tuple[Counter[str], list[str]]:
        """Key counts by kind under this deployment's prefix (keys of no kind the bot
        knows as `other`), and the names of the active sets."""
        counts: Counter[str] = Counter()
        active: list[str] = []
        async for names in self._scan(batch):
            for name in names:
                kind = self.keys.kind_of(name)
                counts[kind if kind in kinds.ALL_KINDS else "other"] += 1
                if kind == kinds.ACTIVE:
                    active.append(name)
            progress(len(names))
        return counts, active

    async def active_users(self, names: list[str]) -> dict[str, int]:
        """Users seen per channel within the active window (ZCOUNT of each active set)."""
        since = time.time() - self.keys.active_window

        async def count() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcount(name, since, "+inf")
                return list(await pipe.execute())

        counts = await self.guard.run(count)
        channel_of = self.keys.active("")
        found = {
            name.removeprefix(channel_of): int(n) for name, n in zip(names, counts, strict=True)
        }
        return dict(sorted(found.items()))

    async def counters(self) -> dict[str, int]:
        """The service's tallies summed over every worker (empty: none published)."""
        raw = await self.guard.run(lambda: self.redis.hgetall(self.keys.stats()))
        values: dict[str, int] = {}
        for name, value in raw.items():
            try:
                values[text_of(name)] = int(value)
            except ValueError:
                continue
        return values

    # --- users, conversations, events -------------------------------------------------

    async def user(
        self,
        channel: str,
        channel_user_id: str,
        user_id: uuid.UUID,
        conversations: Sequence[uuid.UUID],
        scopes: Sequence[str] = (),
    ) -> CachedUser:
        """The user's session in the DM and in each of `scopes`, rate counter, last
        activity, and the cached context of each of `conversations`."""
        keys = self.keys
        every = _with_dm(scopes)
        sessions = [keys.session(channel, channel_user_id, scope) for scope in every]
        rate = keys.user_rate(channel, channel_user_id, user_id)
        contexts = keys.contexts(sessions, conversations)

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for session in sessions:
                    pipe.hgetall(session)
                    pipe.ttl(session)
                pipe.get(rate)
                pipe.ttl(rate)
                pipe.zscore(keys.active(channel), channel_user_id)
                for context in contexts:
                    pipe.lrange(context, 0, -1)
                return list(await pipe.execute())

        found = await self.guard.run(read)
        read_sessions, (count, rate_ttl, seen, *items) = (
            found[: 2 * len(sessions)],
            found[2 * len(sessions) :],
        )
        cached = tuple(
            CachedSession(scope, key, {text_of(k): text_of(v) for k, v in fields.items()}, _ttl(t))
            for scope, key, fields, t in zip(
                every, sessions, read_sessions[0::2], read_sessions[1::2], strict=True
            )
        )
        # On a cluster a context is its session's: of the conversation that session names.
        owners = (
            [_conversation_of(session) for session in cached]
            if keys.cluster
            else list(conversations)
        )
        return CachedUser(
            sessions=cached,
            rate_key=rate,
            rate_count=None if count is None else int(count),
            rate_ttl=_ttl(rate_ttl),
            active_since=seen,
            contexts={c: i for c, i in zip(owners, items, strict=True) if c is not None and i},
        )

    async def delete_user(
        self,
        channel: str,
        channel_user_id: str,
        user_id: uuid.UUID,
        conversations: Sequence[uuid.UUID],
        scopes: Sequence[str] = (),
    ) -> dict[str, int]:
        """Sessions (the DM's and each of `scopes`), rate counter, each conversation's
        context, and the user's entry in the channel's active set. Event claims stay:
        they hold a platform event id and its state, no personal data, and keep a
        redelivered event from being stored again. Lock keys stay: they expire within
        LOCK_TTL_SECONDS and order a message still in flight."""
        keys = self.keys
        sessions = [keys.session(channel, channel_user_id, scope) for scope in _with_dm(scopes)]
        contexts = keys.contexts(sessions, conversations)

        async def delete() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in (*sessions, keys.user_rate(channel, channel_user_id, user_id)):
                    pipe.delete(name)  # one key each: on a cluster they are in several slots
                pipe.zrem(keys.active(channel), channel_user_id)
                for context in contexts:
                    pipe.delete(context)
                return list(await pipe.execute())

        found = await self.guard.run(delete)
        session, (rate, active, *context) = sum(found[: len(sessions)]), found[len(sessions) :]
        return {"session": session, "rate": rate, "active": active, "context": sum(context)}

    async def context(self, conversation_id: uuid.UUID, session_key: str) -> CachedContext:
        """The cached context of a conversation, whose session is `session_key`
        (Keys.conversation_session)."""
        key = self.keys.context_of(session_key, conversation_id)

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lrange(key, 0, -1)
                pipe.ttl(key)
                return list(await pipe.execute())

        items, ttl = await self.guard.run(read)
        return CachedContext(key, items, _ttl(ttl))

    async def event(self, channel: str, event_id: str) -> CachedEvent:
        key = self.keys.dedup(channel, event_id)
        if self.keys.cluster:  # in the slot of its place, which the event id does not say
            pattern = self.keys.dedup_anywhere(channel, event_id)
            places = [name async for name in self._keys_like(pattern)]
            key = places[0] if places else key

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.ttl(key)
                return list(await pipe.execute())

        raw, ttl = await self.guard.run(read)
        claim = None if raw is None else EventClaim.parse(raw)
        return CachedEvent(key, None if raw is None else text_of(raw), claim, _ttl(ttl))

    # --- flush and warm ---------------------------------------------------------------

    async def delete(self, names: Iterable[str]) -> Counter[str]:
        """Delete the named keys; how many existed, by kind."""
        return await self._each_key(names, "delete")  # UNLINK: no pipeline command on a cluster

    async def existing(self, names: Iterable[str]) -> Counter[str]:
        """How many of the named keys exist, by kind: what `delete` would delete."""
        return await self._each_key(names, "exists")

    async def _each_key(self, names: Iterable[str], command: str) -> Counter[str]:
        """`command` (delete or exists) on each key, one call per key (on a cluster they
        are in several slots) in one pipeline; the 1s it answered, summed by kind."""
        names = list(dict.fromkeys(names))
        if not names:
            return Counter()

        async def each() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    getattr(pipe, command)(name)
                return list(await pipe.execute())

        answers = await self.guard.run(each)
        found: Counter[str] = Counter({self.keys.kind_of(name): 0 for name in names})
        for name, count in zip(names, answers, strict=True):
            found[self.keys.kind_of(name)] += int(count)
        return found

    def user_keys(
        self,
        channel: str,
        channel_user_id: str,
        user_id: uuid.UUID,
        conversations: Iterable[uuid.UUID],
        scopes: Iterable[str] = (),
    ) -> list[str]:
        """The sessions (the DM's and each of `scopes`), the rate counter and every
        conversation context of one user."""
        keys = self.keys
        sessions = [keys.session(channel, channel_user_id, scope) for scope in _with_dm(scopes)]
        return [
            *sessions,
            keys.user_rate(channel, channel_user_id, user_id),
            *keys.contexts(sessions, conversations),
        ]

    async def flush_all(
        self, batch: int, progress: Progress, include_state: bool, dry_run: bool = False
    ) -> FlushAll:
        """The cached keys of this deployment: CACHE_KINDS, and STATE_KINDS too with
        `include_state`; every other key is counted as kept, by kind. `dry_run`: only
        counted, as found by the scan."""
        flushed = frozenset(CACHE_KINDS + STATE_KINDS if include_state else CACHE_KINDS)
        result = FlushAll()
        async for names in self._scan(batch):
            doomed = []
            for name in names:
                kind = self.keys.kind_of(name)
                if kind in flushed:
                    doomed.append(name)
                else:  # with an empty prefix, other applications' keys too
                    result.kept[kind if kind in kinds.ALL_KINDS else "other"] += 1
            if dry_run:
                result.deleted.update(self.keys.kind_of(name) for name in doomed)
            else:
                result.deleted.update(await self.delete(doomed))
            progress(len(doomed))
        return result

    async def warm(self, entries: Sequence[ActiveSession]) -> tuple[int, int]:
        """Put back sessions and contexts where absent (the WARM script): how many
        sessions and contexts were filled."""
        calls = [self._warm_call(entry) for entry in entries]

        async def fill(pipe: Pipeline) -> None:
            for call in calls:
                await self._warm(call, pipe)

        filled = await self.guard.run(lambda: self._pipelines.run(fill))
        return sum(int(s) for s, _ in filled), sum(int(c) for _, c in filled)

    def _warm_call(self, entry: ActiveSession) -> scripts.Warm:
        keys = self.keys
        session_key = keys.session(entry.channel, entry.channel_user_id, entry.scope)
        return scripts.Warm(
            session_key=session_key,
            context_key=keys.context_of(session_key, entry.session.conversation_id),
            session_ttl=keys.session_ttl,
            context_ttl=keys.context_ttl,
            fence_field=FENCE_FIELD,
            fence=str(entry.context.last_id or ""),
            summary_field=SUMMARY_FIELD,
            summary=encode_context(summary) if (summary := entry.context.summary) else "",
            session=encode_session(
                entry.session, entry.last_activity.timestamp(), fence=entry.context.last_id
            ),
            context=tuple(encode_context(m) for m in entry.context.messages if not m.is_summary),
        )

    # --- contexts of purged conversations, channel configs ----------------------------

    async def contexts_cached(self, conversations: Sequence[uuid.UUID]) -> int:
        """How many of these conversations have a cached context (on a cluster, where
        contexts are kept per session, none is counted: see `drop_contexts`)."""
        if self.keys.cluster:
            return 0

        async def count() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for conversation in conversations:
                    pipe.exists(self.keys.context(conversation))
                return list(await pipe.execute())

        return sum(int(found) for found in await self.guard.run(count))

    async def claim_run(self, name: str, worker: str, seconds: int) -> bool:
        """Whether this worker runs job `name` now: the first to ask in `seconds` does.
        The claim is never released; it lapses, so the job runs once an interval."""
        key = self.keys.run_lock(name)
        return bool(await self.guard.run(lambda: self.redis.set(key, worker, nx=True, ex=seconds)))

    async def drop_contexts(self, conversations: Iterable[uuid.UUID]) -> int:
        """Delete the cached contexts of these conversations; how many there were. On a
        cluster, where contexts are kept per session, none: a session naming a purged
        conversation finds it gone at its next message and reads Postgres."""
        if self.keys.cluster:
            return 0
        dropped = await self.delete(self.keys.context(c) for c in set(conversations))
        return dropped[kinds.CONTEXT]

    async def channel_config_ttl(self, channel: str) -> int | None:
        """Seconds the cached row has left; None if not cached."""
        return _ttl(await self.guard.run(lambda: self.redis.ttl(self.keys.channel_config(channel))))

    async def drop_channel_config(self, channel: str) -> bool:
        """Delete the cached row, so that workers read it from Postgres again."""
        key = self.keys.channel_config(channel)
        return bool(await self.guard.run(lambda: self.redis.delete(key)))

    # --- scanning ---------------------------------------------------------------------

    async def _scan(self, batch: int, pattern: str | None = None) -> AsyncIterator[list[str]]:
        """The names of this deployment's keys (or those matching `pattern`), a SCAN
        call's worth at a time, each call bounded on its own (a large keyspace takes
        many); on a cluster, every primary's in turn."""
        pattern = pattern or self.keys.all_pattern()
        for node in await self._primaries():
            cursor: int = 0
            while True:
                cursor, found = await self._scan_once(cursor, pattern, batch, node)
                yield [text_of(name) for name in found]
                if cursor == 0:
                    break

    async def _keys_like(self, pattern: str) -> AsyncIterator[str]:
        async for names in self._scan(SCAN_BATCH, pattern):
            for name in names:
                yield name

    async def _primaries(self) -> list[Any]:
        """The nodes to scan: None (the one Redis), or each primary of a cluster (whose
        client learns them at its first command)."""
        redis = self.redis
        if not isinstance(redis, RedisCluster):
            return [None]
        await self.guard.run(redis.initialize)
        return list(redis.get_primaries())

    async def _scan_once(
        self, cursor: int, pattern: str, batch: int, node: Any
    ) -> tuple[int, list[Any]]:
        redis = self.redis
        if node is None:
            found = await self.guard.run(lambda: redis.scan(cursor, match=pattern, count=batch))
            return int(found[0]), list(found[1])
        # A cluster client answers with each node's cursor: here the one node's.
        cursors: Any
        cursors, names = await self.guard.run(
            lambda: redis.scan(cursor, match=pattern, count=batch, target_nodes=node)
        )
        return int(next(iter(cursors.values()))), list(names)


def _conversation_of(session: CachedSession) -> uuid.UUID | None:
    try:
        return uuid.UUID(session.fields["conversation_id"])
    except (KeyError, ValueError):
        return None


def _with_dm(scopes: Iterable[str]) -> list[str]:
    """The DM scope first, then the others, each once."""
    return [DM_SCOPE, *(scope for scope in dict.fromkeys(scopes) if scope != DM_SCOPE)]


def _ttl(seconds: int) -> int | None:
    return seconds if seconds >= 0 else None  # -1: no expiry, -2: gone meanwhile
