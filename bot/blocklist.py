"""The blocklist: platform users the bot ignores. Postgres holds it (`blocked_users`),
Redis caches it (`blocked:users`), each worker keeps it in memory, in step with ops'
changes by pub/sub and a reload every FLAGS_REFRESH_SECONDS, exactly as the feature
flags are (bot/mirror.py). The service reads only the in-memory copy: a blocked user's
message costs no round trip at all.
"""

from __future__ import annotations

from bot.blockset import Blocklist
from bot.cache.blocklist import BlocklistCache
from bot.domain import BlockedRow
from bot.mirror import Change, Mirror, RowsWritten, publish_change
from bot.store.blocklist import BlocklistQueries


class BlockedUsers(Mirror[BlockedRow, Blocklist]):
    """One worker's blocklist: `current` is read by the service; a listener keeps it fresh."""

    def __init__(
        self, cache: BlocklistCache, store: BlocklistQueries, refresh_seconds: float
    ) -> None:
        super().__init__(cache, store, refresh_seconds, Blocklist.from_rows, "the blocklist")
        self.cache: BlocklistCache = cache


BlockChange = Change[BlockedRow]


async def change_block(
    store: BlocklistQueries,
    cache: BlocklistCache,
    channel: str,
    user: str,
    *,
    reason: str | None = None,
    unblock: bool = False,
) -> BlockChange:
    """Block or unblock one user in Postgres and Redis, then tell every worker."""

    async def change(write: RowsWritten[BlockedRow]) -> tuple[bool, list[BlockedRow]]:
        return await store.change(channel, user, write, reason=reason, unblock=unblock)

    return await publish_change(cache, change)
