"""Feature flags: Postgres holds them, Redis caches them, each worker keeps them in memory.

Kept in step the way every small table held in memory is (bot/mirror.py): ops change a
row and rewrite the hashes in the same Postgres transaction, then publish on
`features:invalidate` (`change_flag`); each worker (`FeatureFlags`) reloads on that
message and every FLAGS_REFRESH_SECONDS. A hash without its `_loaded` field was flushed
or evicted, so the worker refills all of them from Postgres (a Redis flush never turns a
flag off). The flags themselves are bot/flagset.py, their SQL bot/store/flags.py, their
Redis hashes and pub/sub bot/cache/flags.py.
"""

from __future__ import annotations

from typing import Any

from bot.cache.flags import FlagCache
from bot.domain import FlagRow
from bot.flagset import FlagSet
from bot.mirror import Change, Mirror, RowsWritten, publish_change
from bot.store.flags import FlagQueries


class FeatureFlags(Mirror[FlagRow, FlagSet]):
    """One worker's flags: `current` is read by the service; a listener keeps it fresh."""

    def __init__(self, cache: FlagCache, store: FlagQueries, refresh_seconds: float) -> None:
        super().__init__(cache, store, refresh_seconds, FlagSet.from_rows, "feature flags")
        self.cache: FlagCache = cache


FlagChange = Change[FlagRow]


async def change_flag(
    store: FlagQueries,
    cache: FlagCache,
    scope: str,
    name: str,
    value: Any,
    *,
    unset: bool = False,
) -> FlagChange:
    """Change one flag in Postgres and Redis, then tell every worker (bot/mirror.py)."""

    async def change(write: RowsWritten[FlagRow]) -> tuple[bool, list[FlagRow]]:
        return await store.change(scope, name, value, write, unset=unset)

    return await publish_change(cache, change)
