"""`bot ops cache flush|warm` and `bot ops purge`: Redis housekeeping and retention."""

from __future__ import annotations

import argparse
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from bot.errors import BadInput, NotFound
from bot.ops import deletion, housekeeping
from bot.ops.arguments import age, conversation_id, seconds, user_ref
from bot.ops.context import Ops
from bot.ops.handler import leaf, warn
from bot.ops.render import Out

if TYPE_CHECKING:
    from bot.ops.handler import Subparsers


def register_cache(cache: Subparsers) -> None:
    flush = leaf(
        cache,
        "flush",
        "delete cached state (Postgres keeps everything)",
        "Delete keys of this deployment only (its REDIS_KEY_PREFIX). --user: the user's "
        "session, rate counter and the context of each of their conversations; "
        "--conversation: its context; --all: every cached key (sessions, contexts, channel "
        "configs, feature-flag hashes, active sets; SCAN, in batches of CACHE_BATCH_SIZE), "
        "keeping rate counters, dedup markers, the stats counters and locks.",
        _flush,
        _check_flush,
        deletes=True,
    )
    scope = flush.add_mutually_exclusive_group(required=True)
    scope.add_argument("--user", type=user_ref, metavar="CHANNEL:ID", help="e.g. discord:1234")
    scope.add_argument("--conversation", type=conversation_id, metavar="ID", help="its context")
    scope.add_argument("--all", action="store_true", help="every cached key under the prefix")
    flush.add_argument(
        "--include-state",
        action="store_true",
        help="with --all: also rate counters, dedup markers (a redelivered event would be "
        "stored again) and the stats counters; locks of messages in flight are always kept",
    )
    warm = leaf(
        cache,
        "warm",
        "refill sessions and contexts of recently active users",
        "From Postgres, put back the session and recent context of every user whose active "
        "conversation had a message since --since; keys already cached are left alone.",
        _warm,
    )
    warm.add_argument("--since", type=age, default="1h", metavar="AGE", help="default: 1h")


def register_purge(ops: Subparsers) -> None:
    purge = leaf(
        ops,
        "purge",
        "delete messages older than a cutoff, in small batches",
        "Delete messages older than --older-than in batches of PURGE_BATCH_SIZE rows, one "
        "short transaction each (never a long lock), then inactive conversations left "
        "empty; drop the Redis contexts of the conversations touched. Rows other "
        "transactions hold locked are retried for --lock-wait seconds, then reported as "
        "skipped.",
        _purge,
        deletes=True,
    )
    purge.add_argument("--older-than", type=age, required=True, metavar="AGE", help="e.g. 90d")
    purge.add_argument(
        "--lock-wait",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to retry rows locked by other transactions (default %(default)s)",
    )


def _check_flush(args: argparse.Namespace, settings: Settings) -> None:
    if args.include_state and not args.all:
        raise BadInput("--include-state goes with --all")


def _counts(scope: str, deleted: Counter[str], dry_run: bool, **extra: Any) -> dict[str, Any]:
    """The keys deleted (with `dry_run`: that would be), by kind."""
    return {
        "scope": scope,
        "dry_run": dry_run,
        "deleted": dict(sorted(deleted.items())),
        "total": deleted.total(),
        **extra,
    }


def _deleted_view(out: Out, data: dict[str, Any]) -> None:
    rows = [(kind, count) for kind, count in data["deleted"].items()]
    title = f"{'Would delete' if data['dry_run'] else 'Deleted'} ({data['scope']})"
    out.table(title, ["kind", "#keys"], [*rows, ("total", data["total"])])
    if data.get("kept"):
        kept = ", ".join(f"{count} {kind}" for kind, count in sorted(data["kept"].items()))
        out.note(f"kept: {kept}", style="dim")


async def _context_key(ops: Ops, conversation: uuid.UUID) -> str:
    """A conversation's context key: on a cluster its session's, which Postgres names."""
    keys = ops.cache.keys
    found = await ops.store.records.conversation_history(conversation, 1)
    if found is None:
        return keys.context(conversation)
    row = found.conversation
    session = keys.conversation_session(row.channel_type, row.scope, row.channel_user_id)
    return keys.context_of(session, conversation)


async def _flush(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    if args.dry_run or not args.yes:
        counted = await _flush_keys(ops, args, out, dry_run=True)
        if args.dry_run:
            out.emit(counted, _deleted_view)
            return 0
        kinds = ", ".join(f"{count} {kind}" for kind, count in counted["deleted"].items() if count)
        await deletion.confirm(
            out,
            args,
            f"Delete {counted['total']} keys ({kinds or 'none'}) of {counted['scope']} from "
            "Redis? Postgres keeps everything: the next messages rebuild them.",
        )
    out.emit(await _flush_keys(ops, args, out, dry_run=False), _deleted_view)
    return 0


async def _flush_keys(
    ops: Ops, args: argparse.Namespace, out: Out, *, dry_run: bool
) -> dict[str, Any]:
    """Delete the keys the arguments name, or with `dry_run` count those that exist."""
    cache = ops.cache
    if args.all:
        with out.progress("counting keys" if dry_run else "deleting keys") as advance:
            batch = ops.settings.cache_batch_size
            result = await cache.flush_all(batch, advance, args.include_state, dry_run)
        return _counts("all", result.deleted, dry_run, kept=dict(result.kept))
    if args.conversation:
        scope, names = (
            f"conversation {args.conversation}",
            [await _context_key(ops, args.conversation)],
        )
    else:
        channel, cuid = args.user
        found = await ops.store.housekeeping.user_conversations(channel, cuid)
        if found is None:
            raise NotFound(f"no user {cuid!r} on channel {channel!r}")
        scope = f"user {channel}:{cuid}"
        names = cache.user_keys(channel, cuid, found.user_id, found.conversations, found.scopes)
    counted = await (cache.existing(names) if dry_run else cache.delete(names))
    return _counts(scope, counted, dry_run)


async def _warm(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    since = housekeeping.cutoff_before(args.since)
    store = ops.store.housekeeping
    total = await store.count_active_since(since)
    batch = ops.settings.cache_batch_size
    with out.progress("warming users", total=total) as advance:
        result = await housekeeping.warm(ops.cache, store, since, batch, advance)
    data = {
        "since": since,
        "users": result.users,
        "sessions_filled": result.sessions_filled,
        "contexts_filled": result.contexts_filled,
    }
    out.emit(data, lambda out, data: out.pairs("Warmed", data))
    return 0


async def _purge(ops: Ops, args: argparse.Namespace, out: Out) -> int:
    cutoff = housekeeping.cutoff_before(args.older_than)
    store, batch = ops.store.housekeeping, ops.settings.purge_batch_size
    cache = ops.cache if await ops.cache.reachable() else None
    if args.dry_run:
        result = await housekeeping.purge_dry_run(store, cache, cutoff, batch)
    else:
        if not args.yes:
            counted = await housekeeping.purge_dry_run(store, cache, cutoff, batch)
            contexts = "their" if counted.contexts is None else f"{counted.contexts}"
            await deletion.confirm(
                out,
                args,
                f"Delete {counted.messages} messages older than {cutoff:%Y-%m-%d %H:%M:%S}Z "
                f"and {counted.conversations} inactive conversations left empty from "
                f"Postgres, and drop {contexts} cached contexts? This cannot be undone.",
            )
        counts = await store.count_purgeable(cutoff)
        with out.progress("purging rows", total=counts.messages + counts.conversations) as step:
            result = await housekeeping.purge(store, cache, cutoff, batch, step, args.lock_wait)
    data: dict[str, Any] = {
        "cutoff": cutoff,
        "dry_run": result.dry_run,
        "postgres": {"messages": result.messages, "conversations": result.conversations},
        "redis": {"context": result.contexts},
        "skipped": result.skipped,
        "seconds": round(result.seconds, 3),
    }
    if result.contexts is None:
        ttl = ops.settings.context_ttl_seconds
        warn(out, data, f"Redis is unreachable: cached contexts expire within {ttl} s")
    if result.skipped:
        held = ", ".join(f"{table}: {count}" for table, count in result.skipped.items())
        warn(
            out,
            data,
            f"rows past the cutoff stayed locked by other transactions for {args.lock_wait:g} s "
            f"and were not purged ({held}); run the purge again later",
        )

    def view(out: Out, data: dict[str, Any]) -> None:
        verb = "would remove" if result.dry_run else "removed"
        rows = [
            ("postgres", "messages", result.messages),
            ("postgres", "conversations", result.conversations),
            ("redis", "context keys", result.contexts),
        ]
        out.table(f"Older than {cutoff:%Y-%m-%d %H:%M}Z: {verb}", ["store", "what", "#"], rows)
        out.note(f"{data['seconds']} s", style="dim")

    out.emit(data, view)
    return 0
