"""Rebuild openapi_subset.json from the pinned full spec (run from the project root):

    python bot/emulators/specs/discord/extract.py ../shared/specs/discord/openapi.json

Keeps the operations the Discord adapter and its fake server use, the gateway object
schemas the fake server checks its payloads against, and everything they reference,
each unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPERATIONS = {
    "/users/@me": ["get"],
    "/oauth2/applications/@me": ["get"],
    "/gateway/bot": ["get"],
    "/channels/{channel_id}/messages": ["post"],
    "/channels/{channel_id}/messages/{message_id}": ["patch"],
    "/channels/{channel_id}/typing": ["post"],
    "/users/@me/channels": ["post"],
    "/guilds/{guild_id}/members/{user_id}": ["get"],
}
GATEWAY_SCHEMAS = [
    "MessageResponse",
    "UserResponse",
    "GuildResponse",
    "GuildChannelResponse",
    "ThreadResponse",
    "GuildMemberResponse",
    "GuildRoleResponse",
]
OUT = Path(__file__).with_name("openapi_subset.json")


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _lookup(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    paths = {
        path: {
            key: value
            for key, value in spec["paths"][path].items()
            if key in methods or key == "parameters"
        }
        for path, methods in OPERATIONS.items()
    }
    todo = _refs(paths) | {f"#/components/schemas/{name}" for name in GATEWAY_SCHEMAS}
    seen: set[str] = set()
    while todo:
        ref = todo.pop()
        if ref not in seen:
            seen.add(ref)
            todo |= _refs(_lookup(spec, ref))
    components: dict[str, dict[str, Any]] = {
        "securitySchemes": spec["components"]["securitySchemes"]
    }
    for ref in sorted(seen):
        _, _, kind, name = ref.split("/")
        components.setdefault(kind, {})[name] = _lookup(spec, ref)
    head = {key: spec[key] for key in ("openapi", "info", "externalDocs", "servers")}
    return {**head, "paths": paths, "components": components}


if __name__ == "__main__":
    full = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    OUT.write_text(json.dumps(extract(full), indent=1) + "\n", encoding="utf-8")
