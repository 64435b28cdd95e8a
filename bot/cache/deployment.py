"""What kind of Redis REDIS_URL names, and whether the bot can run on it.

The bot's scripts take several keys of one message at once and its locks must hold:
that needs one Redis that takes writes. A Redis Cluster node answers such scripts
with CROSSSLOT or MOVED, so the locks never hold; a replica refuses every write. Both
are the deployment's mistake, said once at start-up (bot/runtime.py refuses to start)
and by `bot ops health`, rather than paid on every message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLUSTER_NODE = (
    "REDIS_URL names a Redis Cluster node; the bot needs one Redis that takes writes "
    "(a standalone server, or the primary of a replicated one)"
)
REPLICA = "REDIS_URL names a replica, which is read-only; point it at the primary"


def deployment_problem(info: Mapping[str, Any]) -> str | None:
    """Why the Redis of this INFO (its default sections, which hold `cluster_enabled`
    and `role`) cannot serve the bot, or None when it can."""
    if str(info.get("cluster_enabled", 0)) == "1":
        return CLUSTER_NODE
    if info.get("role") in ("slave", "replica"):
        return REPLICA
    return None
