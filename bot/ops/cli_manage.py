"""The management commands of `bot ops`, declared: flags, config, chat, cache, purge,
partitions, backup and restore (docs/ops_manage.md). Each names the function that
runs it in bot/ops/manage*.py; building these parsers imports none of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bot import setting_keys
from bot.flagset import KNOWN_FLAGS
from bot.ops.arguments import age, channel, conversation_id, seconds, user_ref
from bot.ops.parsing import group, leaf

if TYPE_CHECKING:
    from bot.ops.parsing import Subparsers

CONVERSATIONS_SHOWN = 20  # by `bot ops chat show`
ABOUT = (
    "messages is partitioned by month of its timestamp (UTC): messages_pYYYY_MM, plus "
    "messages_default for rows of a month without a partition of its own. The worker "
    "makes the current month and PARTITIONS_AHEAD more every MAINTENANCE_INTERVAL_SECONDS, "
    "and with RETENTION_DAYS set drops whole months older than that."
)


def register_manage(ops: Subparsers) -> None:
    """Add the flags, config, cache, purge, backup and restore commands to `bot ops`."""
    _register_flags(group(ops, "flags", "feature flags: list, get, set, unset"))
    register_config(group(ops, "config", "channel configs: show, set"))
    register_chat(group(ops, "chat", "a chat's settings: list, show, set, unset"))
    register_cache(group(ops, "cache", "the Redis cache: flush, warm"))
    register_purge(ops)
    register_partitions(ops)
    register_backup(ops)
    register_experiment(
        group(ops, "experiment", "A/B model experiments: create, list, show, stop, report")
    )


def _register_flags(flags: Subparsers) -> None:
    known = "; ".join(f"{name}: {spec.help}" for name, spec in KNOWN_FLAGS.items())
    names = sorted(KNOWN_FLAGS)
    leaf(
        flags,
        "list",
        "every flag set, by scope",
        f"Every flag set. Flags: {known}.",
        "bot.ops.manage:_list",
    )
    get = leaf(
        flags,
        "get",
        "the value of a flag in force",
        "The value in force: the channel's if set, else the global one.",
        "bot.ops.manage:_get",
    )
    get.add_argument("name", choices=names, metavar="NAME", help=", ".join(names))
    get.add_argument("--channel", type=channel, help="for this channel (default: global)")
    set_ = leaf(
        flags,
        "set",
        "set a flag, globally or for one channel",
        "Write the flag to Postgres and Redis and tell every worker: they follow within "
        f"seconds. Booleans take true/false, on/off, yes/no, 1/0. Flags: {known}.",
        "bot.ops.manage:_set",
        "bot.ops.manage:_check_value",
    )
    set_.add_argument("name", choices=names, metavar="NAME", help=", ".join(names))
    set_.add_argument("value", metavar="VALUE")
    set_.add_argument("--channel", type=channel, help="only this channel (default: global)")
    unset = leaf(
        flags,
        "unset",
        "remove a flag",
        "Remove the flag: its default applies again.",
        "bot.ops.manage:_unset",
    )
    unset.add_argument("name", choices=names, metavar="NAME", help=", ".join(names))
    unset.add_argument("--channel", type=channel, help="only this channel (default: global)")


def register_backup(ops: Subparsers) -> None:
    dump = leaf(
        ops,
        "backup",
        "the whole database to one file (pg_dump, custom format)",
        "Write every table of DATABASE_URL's database (the embedded one when unset) to "
        "--output with the real pg_dump, in its custom format; progress per table on "
        "standard error. The file restores with `bot ops restore` or pg_restore.",
        "bot.ops.manage_backup:_backup",
        "bot.ops.manage_backup:check_output",
    )
    dump.add_argument("--output", "-o", type=Path, required=True, metavar="FILE")
    load = leaf(
        ops,
        "restore",
        "a backup into an empty database, then checked",
        "Restore FILE (from `bot ops backup`) into DATABASE_URL's database, which must "
        "hold no tables yet (createdb a new one), with the real pg_restore; then check "
        "the schema revision against this code's and count every table's rows.",
        "bot.ops.manage_backup:_restore",
        "bot.ops.manage_backup:check_source",
    )
    load.add_argument("file", type=Path, metavar="FILE")


def register_cache(cache: Subparsers) -> None:
    flush = leaf(
        cache,
        "flush",
        "delete cached state (Postgres keeps everything)",
        "Delete keys of this deployment only (its REDIS_KEY_PREFIX). --user: the user's "
        "session, rate counter and the context of each of their conversations; "
        "--conversation: its context; --all: every cached key (sessions, contexts, channel "
        "configs, feature-flag hashes, active sets, ab_test records; SCAN, in batches of "
        "CACHE_BATCH_SIZE), "
        "keeping rate counters, dedup markers, the stats counters and locks.",
        "bot.ops.manage_cache:_flush",
        "bot.ops.manage_cache:_check_flush",
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
        "bot.ops.manage_cache:_warm",
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
        "bot.ops.manage_cache:_purge",
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


def register_chat(chat: Subparsers) -> None:
    keys = "; ".join(f"{k} ({s.help})" for k, s in setting_keys.CHAT_KEYS.items())
    listed = leaf(
        chat,
        "list",
        "every chat with settings of its own",
        "Every chat_configs row, of one platform or all.",
        "bot.ops.manage_chat:_list",
    )
    listed.add_argument("channel", nargs="?", type=channel, metavar="CHANNEL")
    show = leaf(
        chat,
        "show",
        "a chat's settings in force and its conversations",
        "For every key the value in force in the chat (or --thread) and where it comes "
        "from: the thread's row, the chat's, the platform's channel_configs row, or the "
        f"global setting; then the newest {CONVERSATIONS_SHOWN} conversations held there.",
        "bot.ops.manage_chat:_show",
    )
    _place_arguments(show)
    set_ = leaf(
        chat,
        "set",
        "change a chat's settings (validated); every worker follows at once",
        f"Set keys of the chat's row (or --thread's); `key=` (empty) removes one. Keys: {keys}.",
        "bot.ops.manage_chat:_set",
        "bot.ops.manage_chat:_check_pairs",
    )
    _place_arguments(set_)
    set_.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    unset = leaf(
        chat,
        "unset",
        "remove keys of a chat's settings",
        "Remove the keys: the platform's value (or the global setting) applies again. A row "
        "left with nothing set is deleted.",
        "bot.ops.manage_chat:_set",
        "bot.ops.manage_chat:_check_keys",
    )
    _place_arguments(unset)
    unset.add_argument("keys", nargs="+", metavar="KEY")


def _place_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("channel", type=channel, metavar="CHANNEL")
    parser.add_argument("chat", metavar="CHAT_ID", help="the platform's id of the chat")
    parser.add_argument("--thread", metavar="THREAD_ID", help="a thread (topic) of the chat")


def register_config(config: Subparsers) -> None:
    keys = "; ".join(f"{k} ({s.help})" for k, s in setting_keys.CONFIG_KEYS.items())
    show = leaf(
        config,
        "show",
        "a channel's config and the values in force",
        "The channel's channel_configs row and, for every key, the value in force and "
        "where it comes from (the row, or the global setting). Without CHANNEL: every row.",
        "bot.ops.manage_config:_show",
    )
    show.add_argument("channel", nargs="?", type=channel, metavar="CHANNEL")
    set_ = leaf(
        config,
        "set",
        "change a channel's config (validated); its cache is invalidated",
        f"Set keys of the channel's row; `key=` (empty) removes one. Keys: {keys}.",
        "bot.ops.manage_config:_set",
        "bot.ops.manage_config:_check_pairs",
    )
    set_.add_argument("channel", type=channel, metavar="CHANNEL")
    set_.add_argument("pairs", nargs="+", metavar="KEY=VALUE")


def register_partitions(ops: Subparsers) -> None:
    partitions = group(
        ops, "partitions", "the monthly partitions of messages: list, create", about=ABOUT
    )
    leaf(
        partitions,
        "list",
        "each partition with its bounds, rows and size",
        f"{ABOUT} Lists every partition, oldest first, with its bounds, exact row count "
        "(one count per partition: progress on standard error) and size on disk.",
        "bot.ops.manage_partitions:_list",
    )
    create = leaf(
        partitions,
        "create",
        "make the partitions of the coming months now",
        f"{ABOUT} Makes the partitions of the current month and --ahead more that do not "
        "exist yet, as the worker does (safe beside running workers: one at a time, "
        "under a Postgres advisory lock). Rows of those months already in "
        "messages_default move into their partition.",
        "bot.ops.manage_partitions:_create",
    )
    create.add_argument(
        "--ahead",
        type=_months,
        default=None,
        metavar="N",
        help="months after the current one (default: PARTITIONS_AHEAD)",
    )


def _months(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 120:
        raise argparse.ArgumentTypeError("a number of months from 0 to 120")
    return int(value)


def register_experiment(experiments: Subparsers) -> None:
    create = leaf(
        experiments,
        "create",
        "start an A/B model experiment, globally or for one channel",
        "Each user of its scope is put in one variant, deterministically (a hash of the "
        "experiment's name and the user's id into the cumulative shares) and for good; the "
        "variant's model answers them unless their conversation's own model override does "
        "(README: model resolution). Shares are whole percentages summing to 100; with "
        "ALLOWED_MODELS set, only those models. Variants are fixed once created: stop the "
        "experiment and create another (a new name) to change them. At most one runs per "
        "scope; a channel's beats the global one there. Workers follow within seconds.",
        "bot.ops.experiments:create",
        "bot.ops.experiments:check_create",
    )
    create.add_argument("name", metavar="NAME", help="letters, digits and . _ -, at most 64")
    create.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME=MODEL:SHARE",
        help="a variant, e.g. a=gpt-4o:50; repeated, at least two",
    )
    create.add_argument("--channel", type=channel, help="only this channel (default: global)")
    leaf(
        experiments,
        "list",
        "every experiment, running and stopped",
        "Every experiment, newest first, with its scope, variants and when it started and stopped.",
        "bot.ops.experiments:list_",
    )
    for name, help_, text, run in (
        (
            "show",
            "one experiment: variants and users assigned",
            "The experiment's variants with the users assigned to each (Postgres), and "
            "how many users its ab_test:{experiment} hash in Redis records.",
            "bot.ops.experiments:show",
        ),
        (
            "stop",
            "stop an experiment: its users go back to the usual model",
            "Stop the experiment (for good: its name is not reused, its report stays). "
            "Workers follow within seconds.",
            "bot.ops.experiments:stop",
        ),
    ):
        leaf(experiments, name, help_, text, run).add_argument("name", metavar="NAME")
    report = leaf(
        experiments,
        "report",
        "compare the variants: users, tokens, cost, latency, errors, feedback",
        "Per variant, from the replies written in it: users assigned, replies, prompt and "
        "completion tokens and their cost (LLM_PRICES, as bot ops usage), the responder's "
        "latency p50/p95, errors (messages left without a reply, streamed replies cut "
        "off), and positive/negative feedback with a 95% Wilson interval of the positive "
        "share. Reads DATABASE_READ_URL's replica when there is one.",
        "bot.ops.experiments:report",
    )
    report.add_argument("name", metavar="NAME")
