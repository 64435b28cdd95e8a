"""`bot ops`: look into the bot's Redis and Postgres, and fix things.

`register` adds the `ops` command with its inspection sub-commands (health, stats,
user, conversation, event; bot/ops/commands.py) and the management sub-commands
(bot/ops/cli_manage.py). Each names the function that runs it: building the parsers
imports none of them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bot.ops.arguments import age, channel, conversation_id, positive, search_text, timeout
from bot.ops.cli_manage import register_manage
from bot.ops.parsing import OPS_DOCS, group, leaf

if TYPE_CHECKING:
    from bot.ops.parsing import Subparsers

DESCRIPTION = f"""\
Inspect and manage the bot's state: Postgres (the source of truth) and Redis (its
cache), the configured servers or the embedded ones. Every command prints tables,
or one JSON object with --json (on failure {{"error": …, "exit_code": …}}); progress
and errors go to standard error. Exit codes: 0 done; 1 not done: a store is down or
refused, what the command names does not exist, a deletion was answered no, or health
is not healthy; 2 bad input: an invalid argument (an unknown channel, a malformed id,
a number out of range), a deletion without a terminal and without --yes, an invalid
setting. Commands that delete data (user delete, purge, cache flush) ask first on a
terminal, take --yes for scripts and --dry-run to count what would go.
{OPS_DOCS}"""


def _leaf(
    parent: Subparsers, name: str, help: str, text: str, run: str, *, deletes: bool = False
) -> argparse.ArgumentParser:
    return leaf(parent, name, help, text, run, docs=OPS_DOCS, deletes=deletes)


def _group(parent: Subparsers, name: str, help: str) -> Subparsers:
    return group(parent, name, help, docs=OPS_DOCS)


def _user_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "channel", type=channel, metavar="CHANNEL", help="console, discord, telegram or slack"
    )
    parser.add_argument("user", metavar="USER_ID", help="the user's id on that platform")


def register(subparsers: Subparsers) -> None:
    """Add `bot ops` and its sub-commands to the `bot` command line."""
    ops = subparsers.add_parser(
        "ops",
        help="inspect and manage Redis and Postgres (health, stats, users, conversations …)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = ops.add_subparsers(dest="ops_command", metavar="COMMAND", required=True)
    _register_inspection(commands)
    register_manage(commands)


def _register_inspection(commands: Subparsers) -> None:
    check = _leaf(
        commands,
        "health",
        "are Postgres and Redis up, and the schema current?",
        "Reach Postgres and Redis and time a round trip to each; compare the database's "
        "migration revision with this code's head; show Redis memory and maxmemory-policy. "
        "Exit 1 if a store is down or the schema is behind (run `bot migrate`).",
        "bot.ops.commands:health",
    )
    check.add_argument(
        "--timeout",
        type=timeout,
        default=5.0,
        metavar="SECONDS",
        help="give up on a store after this long, more than 0 (default %(default)s)",
    )
    _leaf(
        commands,
        "stats",
        "what the bot is doing: users, messages, cache, sizes",
        "Active users per channel (Redis active sets), live sessions, open and recently "
        "active conversations, messages in the last hour and 24 h per channel and replies "
        "per model, rate-limited and de-duplicated counts and cache hit ratios summed over "
        "all workers (when the workers publish them), Redis memory and keys by kind, "
        "Postgres table and index sizes and index usage.",
        "bot.ops.commands:stats",
    )
    spend = _leaf(
        commands,
        "usage",
        "tokens the LLM spent and what they cost, by user, chat, channel or model",
        "Prompt and completion tokens of the replies stored since --since, grouped by "
        "--by, with their cost at each model's price per million tokens (LLM_PRICES over "
        "the defaults of common models; a model with no price makes its group's cost "
        "unknown). Reads DATABASE_READ_URL's replica when there is one.",
        "bot.ops.usage:usage",
    )
    spend.add_argument(
        "--by",
        choices=("user", "chat", "channel", "model"),
        default="model",
        help="group by writer, chat (a DM is its writer's), platform or model "
        "(default %(default)s)",
    )
    spend.add_argument(
        "--since",
        type=age,
        default="30d",
        metavar="AGE",
        help="replies stored this recently: 12h, 7d, 4w … (default %(default)s)",
    )
    _register_user(
        _group(commands, "user", "one user: show, export, delete, block, unblock; who is blocked")
    )
    _register_conversation(_group(commands, "conversation", "conversations: show, search"))
    event = _leaf(
        commands,
        "event",
        "was a platform event answered? its claim in Redis and its rows in Postgres",
        "One platform event (a Slack event id, a Telegram update id, a Discord message id, "
        "as the adapter names it): the state of its claim in Redis (processing, answered, "
        "unfinished, done; docs/architecture.md), the user message and reply Postgres "
        "stored for it, and what the two say together.",
        "bot.ops.commands:event_show",
    )
    event.add_argument(
        "channel", type=channel, metavar="CHANNEL", help="console, discord, telegram or slack"
    )
    event.add_argument("event", metavar="EVENT_ID", help="the platform's id of the event")


def _register_user(users: Subparsers) -> None:
    show = _leaf(
        users,
        "show",
        "the user's row, cached session and conversations",
        "The users row, the cached session with its TTL, this minute's rate counter, and "
        "each conversation with its message count and how many are in the cached context.",
        "bot.ops.commands:user_show",
    )
    _user_arguments(show)
    export = _leaf(
        users,
        "export",
        "everything stored about the user, as JSON",
        "Write the user's row, conversations with all their messages, and what Redis holds "
        "about them (session, rate counter, cached contexts) as one JSON document.",
        "bot.ops.commands:user_export",
    )
    _user_arguments(export)
    export.add_argument(
        "--output", "-o", metavar="FILE", help="write to FILE (mode 600) instead of standard output"
    )
    delete = _leaf(
        users,
        "delete",
        "erase the user from Postgres and Redis",
        "Delete the user's row and, by cascade, their conversations and messages; then "
        "their session, rate counter, cached contexts and active-set entry in Redis.",
        "bot.ops.commands:user_delete",
        deletes=True,
    )
    _user_arguments(delete)
    _register_blocklist(users)


def _register_blocklist(users: Subparsers) -> None:
    check = "bot.ops.manage_block:check_block"
    block = leaf(
        users,
        "block",
        "ignore the user: no reply, nothing stored",
        "Put the platform user on the blocklist (they need not have written yet): every "
        "worker ignores their messages within seconds, stores nothing and calls no LLM. "
        "Blocking again keeps the first time and takes a new --reason.",
        "bot.ops.manage_block:block",
        check,
        docs=OPS_DOCS,
    )
    _user_arguments(block)
    block.add_argument("--reason", metavar="TEXT", help="why, for the operators (1-500 chars)")
    unblock = leaf(
        users,
        "unblock",
        "answer the user again",
        "Take the platform user off the blocklist: every worker answers them again within seconds.",
        "bot.ops.manage_block:unblock",
        check,
        docs=OPS_DOCS,
    )
    _user_arguments(unblock)
    _leaf(
        users,
        "blocked",
        "the users the bot ignores",
        "Every blocked platform user, with the reason given and when.",
        "bot.ops.manage_block:blocked",
    )


def _register_conversation(group: Subparsers) -> None:
    show = _leaf(
        group,
        "show",
        "a conversation's messages",
        "The newest messages of the conversation, oldest first, with role, model, tokens "
        "and time; `cached` marks those also in the Redis context.",
        "bot.ops.commands:conversation_show",
    )
    show.add_argument("id", type=conversation_id, metavar="ID", help="the conversation id")
    show.add_argument(
        "--limit", "-n", type=positive, default=50, help="how many messages (default %(default)s)"
    )
    search = _leaf(
        group,
        "search",
        "full-text search over all messages",
        "Postgres full-text search (GIN index, 'simple' configuration: no stemming). "
        'Web-search syntax: words (all must match), "a phrase", -excluded, or. Newest '
        "first, with conversation, user, time and a snippet.",
        "bot.ops.commands:conversation_search",
    )
    search.add_argument(
        "text", type=search_text, nargs="+", metavar="TEXT", help="what to search for"
    )
    search.add_argument(
        "--limit", "-n", type=positive, default=20, help="most results (default %(default)s)"
    )
