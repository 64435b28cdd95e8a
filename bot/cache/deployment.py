"""What kind of Redis REDIS_URL names, and whether the bot can run on it.

The bot's scripts take several keys of one message at once and its locks must hold:
that needs one Redis that takes writes. A Redis Cluster node answers such scripts
with CROSSSLOT or MOVED, so the locks never hold; a replica refuses every write. Both
are the deployment's mistake, said once at start-up (bot/runtime.py refuses to start)
and by `bot ops health`, rather than paid on every message.
"""

from __future__ import annotations

from redis.asyncio import Redis

CLUSTER_NODE = (
    "REDIS_URL names a Redis Cluster node; the bot needs one Redis that takes writes "
    "(a standalone server, or the primary of a replicated one)"
)
REPLICA = "REDIS_URL names a replica, which is read-only; point it at the primary"


async def deployment_problem(redis: Redis) -> str | None:
    """Why this Redis cannot serve the bot, or None when it can."""
    cluster = await redis.info("cluster")
    if str(cluster.get("cluster_enabled", 0)) == "1":
        return CLUSTER_NODE
    replication = await redis.info("replication")
    if replication.get("role") in ("slave", "replica"):
        return REPLICA
    return None
