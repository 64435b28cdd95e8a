"""Feature flags in Redis: the hashes `features:global` and `features:channel:{channel}`,
and the pub/sub channel on which a change is announced.

Field = flag name, value = JSON; every hash written from Postgres also holds the
field `_loaded`, so a flushed or evicted hash is told apart from "no flags".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from bot.cache.codec import text_of
from bot.cache.keys import Keys
from bot.cache.pubsub import Announcer, Guard
from bot.domain import FlagRow
from bot.flagset import GLOBAL, FlagSet

log = logging.getLogger(__name__)

LOADED_FIELD = "_loaded"


class FlagCache(Announcer):
    """The Redis side: read and rewrite the hashes, publish a change."""

    def __init__(self, redis: Redis, keys: Keys, guard: Guard, channels: Sequence[str]):
        super().__init__(redis, guard, keys.features_invalidation_channel())
        self.keys = keys
        self.channels = tuple(channels)

    def hash_keys(self, rows: Sequence[FlagRow] = ()) -> dict[str, str]:
        """Scope -> key: global, every known channel, and any channel with a flag."""
        scopes = [GLOBAL, *self.channels, *(r.scope for r in rows if r.scope != GLOBAL)]
        return {
            scope: self.keys.features_global()
            if scope == GLOBAL
            else self.keys.features_channel(scope)
            for scope in dict.fromkeys(scopes)
        }

    async def read(self) -> FlagSet | None:
        """The cached flags; None when a hash is missing (flushed, evicted, never filled)."""
        scopes = self.hash_keys()

        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in scopes.values():
                    pipe.hgetall(key)
                return list(await pipe.execute())

        found = await self.guard.run(run)
        decoded: dict[str, dict[str, Any]] = {}
        for scope, raw in zip(scopes, found, strict=True):
            values = {text_of(k): text_of(v) for k, v in raw.items()}
            if LOADED_FIELD not in values:
                return None
            decoded[scope] = _decode(scope, values)
        global_ = decoded.pop(GLOBAL)
        return FlagSet(global_, {c: v for c, v in decoded.items() if v})

    async def write(self, rows: Sequence[FlagRow]) -> None:
        """Replace every hash with `rows`, atomically (MULTI)."""
        scopes = self.hash_keys(rows)

        async def run() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                for scope, key in scopes.items():
                    fields: dict[Any, Any] = {LOADED_FIELD: "1"}
                    fields.update((r.name, json.dumps(r.value)) for r in rows if r.scope == scope)
                    pipe.delete(key)
                    pipe.hset(key, mapping=fields)
                await pipe.execute()

        await self.guard.run(run)

    async def drop(self) -> None:
        """Delete the hashes, so that workers refill them from Postgres."""
        keys = list(self.hash_keys().values())
        await self.guard.run(lambda: self.redis.delete(*keys))


def _decode(scope: str, values: dict[str, str]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for name, raw in values.items():
        if name == LOADED_FIELD:
            continue
        try:
            decoded[name] = json.loads(raw)
        except ValueError:
            log.warning("ignoring unreadable feature flag %s in scope %s", name, scope)
    return decoded
