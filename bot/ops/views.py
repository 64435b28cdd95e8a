"""The tables of each inspection command (the `--json` output is the data itself)."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from bot.domain import summary_label
from bot.ops.conversations import HIGHLIGHT
from bot.ops.render import Out, show, size

MAX_CONTENT = 300  # characters of a message shown in a table; --json has them all


def _state(ok: bool, good: str = "ok", bad: str = "DOWN") -> Text:
    return Text(good, style="green") if ok else Text(bad, style="bold red")


def _clip(content: str) -> str:
    return content if len(content) <= MAX_CONTENT else content[: MAX_CONTENT - 1] + "…"


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value} s"


def _store_details(part: dict[str, Any], name: str, extra: str = "") -> str:
    if part["error"]:
        return f"{part['url']}: {part['error']}"
    return f"{name} {part['version']} at {part['url']}{extra}"


def health_view(out: Out, data: dict[str, Any]) -> None:
    pg, rd, mig = data["postgres"], data["redis"], data["migrations"]
    limit = size(rd["maxmemory"]) if rd["maxmemory"] else "no limit"
    memory = f"; memory {rd['used_memory_human']} of {limit}, policy {rd['maxmemory_policy']}"
    revision = f"{_database_revision(mig)}, code head {mig['head']}"
    rows = [
        ("Postgres", _state(pg["ok"]), pg["latency_ms"], _store_details(pg, "Postgres")),
        ("Redis", _state(rd["ok"]), rd["latency_ms"], _store_details(rd, "Redis", memory)),
        ("Migrations", _state(mig["ok"], mig["status"], mig["status"].upper()), None, revision),
    ]
    if "replica" in data:
        rows.insert(1, _replica_row(data["replica"]))
    rows.append(_inbox_row(data["inbox"]))
    out.table("Health", ["component", "status", "round trip ms", "details"], rows)
    for warning in data["warnings"]:
        out.note(f"warning: {warning}", style="yellow")
    out.note(
        "healthy" if data["ok"] else "NOT healthy", style="green" if data["ok"] else "bold red"
    )


def _database_revision(migrations: dict[str, Any]) -> str:
    """A database Postgres could not be asked about has an unknown revision, not none."""
    if migrations["status"] == "unknown":
        return "database revision unknown (Postgres did not answer)"
    return f"database at {migrations['current'] or 'no revision'}"


def _inbox_row(inbox: dict[str, Any]) -> tuple[str, Text, Any, str]:
    """The messages kept and not yet answered, and how many no worker is holding."""
    if inbox["pending"] is None:
        return ("Inbox", Text("unknown", style="yellow"), None, f"not read: {inbox['error']}")
    details = f"{inbox['pending']} messages not yet answered"
    if inbox["pending"]:
        age = inbox["oldest_seconds"]
        details += f" ({inbox['waiting']} held by no worker), the oldest {age:.0f} s old"
    return ("Inbox", Text("ok", style="green"), None, details)


def _replica_row(replica: dict[str, Any]) -> tuple[str, Text, Any, str]:
    """The read replica: reachable, in recovery, and its replay lag."""
    if replica["error"] or replica["in_recovery"] is None:
        details = _store_details(replica, "Postgres")
    elif not replica["in_recovery"]:
        details = _store_details(replica, "Postgres", ", NOT in recovery (not a standby)")
    else:
        seconds = replica["lag_seconds"]
        lag = "unknown" if seconds is None else f"{seconds:.1f} s"
        behind = replica["lag_bytes"]
        lag += "" if behind is None else f" ({size(behind)} of WAL)"
        details = _store_details(replica, "Postgres", f", in recovery, replay lag {lag}")
    return ("Read replica", _state(replica["ok"]), replica["latency_ms"], details)


def stats_view(out: Out, data: dict[str, Any]) -> None:
    active = data["active_users"]
    title = f"Active users (last {active['window_seconds']} s, from Redis)"
    _tally(out, title, ("channel", "users"), active["by_channel"], "nobody in the window")
    conversations = data["conversations"]
    out.pairs(
        "Sessions and conversations",
        {
            "live sessions (Redis)": data["live_sessions"],
            "open conversations": conversations["open"],
            "active in the last hour": conversations["active_last_hour"],
            "active in the last 24 h": conversations["active_last_24h"],
        },
    )
    for title, rows, name in (
        ("Messages by channel", data["messages"]["by_channel"], "channel"),
        ("Replies by model", data["messages"]["replies_by_model"], "model"),
    ):
        out.table(
            title,
            [name, "# last hour", "# last 24 h"],
            [(row[name], row["last_hour"], row["last_24h"]) for row in rows],
            empty="none in the last 24 h",
        )
    _counters_view(out, data["counters"])
    redis = data["redis"]
    title = f"Redis keys by kind (memory used: {redis['used_memory_human']})"
    _tally(out, title, ("kind", "keys"), redis["keys_by_kind"], "no keys")
    tokens = data["tokens_last_24h"]
    cost = tokens["cost_usd"]
    out.pairs(
        "LLM tokens, last 24 h (bot ops usage for more)",
        {
            "replies": tokens["replies"],
            "prompt tokens": tokens["prompt_tokens"],
            "completion tokens": tokens["completion_tokens"],
            "cost (USD)": "unknown (models with no price: LLM_PRICES)"
            if cost is None
            else f"{cost:.4f}",
        },
    )
    _postgres_view(out, data["postgres"])


def _tally(
    out: Out, title: str, names: tuple[str, str], counts: dict[str, int], empty: str
) -> None:
    """A table of counts: what is counted, and how many."""
    what, unit = names
    out.table(title, [what, f"# {unit}"], counts.items(), empty=empty)


def _counters_view(out: Out, counters: dict[str, Any] | None) -> None:
    if counters is None:
        out.note(
            "Counters across workers (rate limited, de-duplicated, cache hit ratio): n/a, "
            "no worker has published its counters",
            style="dim",
        )
        return
    out.pairs(
        "Counters (all workers)",
        {"rate limited": counters["rate_limited"], "de-duplicated": counters["duplicate"]},
    )
    rows = [
        (kind, c["hits"], c["misses"], "-" if c["ratio"] is None else f"{c['ratio']:.1%}")
        for kind, c in counters["cache"].items()
    ]
    out.table("Cache hit ratio (all workers)", ["kind", "# hits", "# misses", "# ratio"], rows)


def _postgres_view(out: Out, postgres: dict[str, Any]) -> None:
    out.table(
        "Postgres tables",
        ["table", "# rows", "size total", "size table", "size indexes", "# seq scans"],
        [
            (
                t["table"],
                t["rows"],
                size(t["total_bytes"]),
                size(t["table_bytes"]),
                size(t["index_bytes"]),
                t["seq_scan"],
            )
            for t in postgres["tables"]
        ],
    )
    out.table(
        "Postgres indexes (usage since the statistics were reset)",
        ["table", "index", "# scans", "# tuples read", "size"],
        [
            (i["table"], i["index"], i["scans"], i["tuples_read"], size(i["bytes"]))
            for i in postgres["indexes"]
        ],
    )


def user_view(out: Out, data: dict[str, Any]) -> None:
    user, cache = data["user"], data["cache"]
    out.pairs(
        f"User {user['channel_type']}:{user['channel_user_id']}",
        {
            "id": user["id"],
            "username": user["username"],
            "preferred model": user["preferred_model"],
            "created": user["created_at"],
            "updated": user["updated_at"],
            "metadata": user["metadata"],
        },
    )
    session, rate = cache["session"], cache["rate"]
    out.pairs(
        "Cached in Redis",
        {
            "session": session["key"] if session else "not cached",
            "session fields": session["fields"] if session else None,
            "session expires in": _seconds(session["ttl_seconds"]) if session else None,
            "sessions in chats": [s["scope"] for s in cache["scoped_sessions"]],
            "messages this minute": rate["count"] if rate else 0,
            "last seen (active set)": cache["active_last_seen"],
        },
    )
    out.table(
        "Conversations",
        ["id", "scope", "active", "started", "last activity", "# messages", "# tokens", "# cached"],
        [
            (
                c["id"],
                f"{c['scope']} (shared)" if c["shared"] else c["scope"],
                c["is_active"],
                c["started_at"],
                c["last_activity"],
                c["messages"],
                c["tokens"],
                c["cached_context"],
            )
            for c in data["conversations"]
        ],
    )


def delete_view(out: Out, data: dict[str, Any]) -> None:
    user, pg, rd = data["user"], data["postgres"], data["redis"]
    out.pairs(
        f"Deleted user {user['channel_type']}:{user['channel_user_id']} ({user['id']})",
        {
            "Postgres": f"1 user, {pg['conversations']} conversations, {pg['messages']} messages",
            "Redis": f"session {rd['session']}, rate counter {rd['rate']}, "
            f"contexts {rd['context']}, active-set entry {rd['active']}",
        },
    )
    out.note(
        "Kept: event claims (a platform event id and its state, no personal data; they stop a "
        "redelivered event from being stored again) and lock keys (they expire by themselves).",
        style="dim",
    )


def delete_preview_view(out: Out, data: dict[str, Any]) -> None:
    user, pg, rd = data["user"], data["postgres"], data["redis"]
    keys = ", ".join(f"{count} {kind}" for kind, count in rd.items() if count) or "none"
    out.pairs(
        f"Would delete user {user['channel_type']}:{user['channel_user_id']} ({user['id']})",
        {
            "Postgres": f"1 user, {pg['conversations']} conversations, {pg['messages']} messages",
            "Redis": f"keys: {keys}; and the active-set entry",
        },
    )
    out.note("dry run: nothing deleted", style="dim")


def event_view(out: Out, data: dict[str, Any]) -> None:
    redis, postgres = data["redis"], data["postgres"]
    rows: dict[str, Any] = {"meaning": data["meaning"], "stored as": data["stored_as"]}
    rows["Redis claim"] = redis["value"]
    rows["claim expires in"] = _seconds(redis["ttl_seconds"])
    if postgres:
        rows["conversation"] = postgres["conversation_id"]
        rows["user"] = postgres["channel_user_id"]
        rows["message"] = f"{postgres['message_id']} at {show(postgres['timestamp'])}"
        reply = postgres["reply_id"]
        rows["reply"] = f"{reply} at {show(postgres['reply_timestamp'])}" if reply else None
    else:
        rows["Postgres"] = "nothing stored"
    out.pairs(f"Event {data['channel']}:{data['event']}", rows)


def conversation_view(out: Out, data: dict[str, Any]) -> None:
    c, context = data["conversation"], data["context"]
    out.pairs(
        f"Conversation {c['id']}",
        {
            "user": f"{c['channel_type']}:{c['channel_user_id']} ({c['username'] or '-'})"
            if c["user_id"]
            else f"{c['channel_type']}: shared by everyone in the scope",
            "scope": c["scope"],
            "active": c["is_active"],
            "model override": c["model_override"],
            "started": c["started_at"],
            "last activity": c["last_activity"],
            "messages": c["messages"],
            "cached context": f"{context['length']} in {context['key']}, "
            f"expires in {_seconds(context['ttl_seconds'])}",
        },
    )
    out.table(
        f"Last {len(data['messages'])} messages (cached: also in the Redis context)",
        ["time", "role", "model", "# tokens", "cached", "content"],
        [
            (
                m["timestamp"],
                m["role"],
                m["model_used"],
                m["token_count"],
                m["cached"],
                _clip(_shown(m)),
            )
            for m in data["messages"]
        ],
        empty="no messages",
    )


def _shown(message: dict[str, Any]) -> str:
    """A message's text as the table shows it: a summary says it is one."""
    covers = message.get("summary_of")
    return message["content"] if covers is None else f"{summary_label(covers)} {message['content']}"


def export_view(out: Out, data: dict[str, Any]) -> None:
    out.pairs("Exported", data)


def search_view(out: Out, data: dict[str, Any]) -> None:
    results = data["results"]
    out.table(
        f"Messages matching {data['query']!r} (newest first, at most {data['limit']})",
        ["time", "conversation", "user", "role", "snippet"],
        [
            (
                r["timestamp"],
                r["conversation_id"],
                f"{r['channel']}:{r['channel_user_id'] or '(the bot)'}",
                r["role"],
                out.highlighted(r["snippet"], HIGHLIGHT),
            )
            for r in results
        ],
        empty="no message matches",
    )
