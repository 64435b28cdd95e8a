"""What kind of Redis REDIS_URL names, and whether the bot can run on it as configured.

The bot's scripts take several keys of one message at once and its locks must hold:
that needs a Redis that takes writes, and the key layout of its kind. Scripts written
for one Redis get CROSSSLOT or MOVED from a Redis Cluster node, so the locks never
hold, unless REDIS_CLUSTER gives the keys hash tags (bot/cache/keys.py); a replica
refuses every write. Each is the deployment's mistake, said once at start-up
(bot/runtime.py refuses to start) and by `bot ops health`, rather than paid on every
message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLUSTER_NODE = (
    "REDIS_URL names a Redis Cluster node; set REDIS_CLUSTER=true to use the cluster, "
    "or point REDIS_URL at a standalone Redis"
)
NOT_A_CLUSTER = (
    "REDIS_CLUSTER is true but REDIS_URL names a Redis without cluster mode; name a node "
    "of the cluster, or unset REDIS_CLUSTER"
)
REPLICA = "REDIS_URL names a replica, which is read-only; point it at the primary"


def deployment_problem(info: Mapping[str, Any], cluster: bool = False) -> str | None:
    """Why the Redis of this INFO (its default sections, which hold `cluster_enabled`
    and `role`) cannot serve the bot configured for a cluster or not, or None."""
    enabled = str(info.get("cluster_enabled", 0)) == "1"
    if enabled != cluster:
        return CLUSTER_NODE if enabled else NOT_A_CLUSTER
    if not cluster and info.get("role") in ("slave", "replica"):
        return REPLICA  # a cluster client reads INFO of a primary it chose itself
    return None
