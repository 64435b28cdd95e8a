"""/config: a group's or thread's settings, shown to anyone, changed by its admins.

    /config                       the settings in force here
    /config set key=value …       (admins) set keys of this chat's (or thread's) row
    /config unset key …           (admins) remove keys: the platform's values apply again

The keys and their checks are those of `bot ops chat set` (bot/setting_keys.py), but
for the quotas, which only an operator sets.
"""

from __future__ import annotations

import shlex

from bot import setting_keys
from bot.commands.context import Command, CommandContext, CommandResult, refusal
from bot.domain import Reply, ReplyKind
from bot.errors import BadInput

PRIVATE = "There's nothing to configure in a private chat: /model chooses your model."
USAGE = "Usage: /config, /config set key=value …, or /config unset key …"


async def config(command: Command, context: CommandContext) -> CommandResult:
    if context.scope.private:
        return CommandResult(Reply(PRIVATE, ReplyKind.INVALID))
    try:
        words = shlex.split(command.argument)
    except ValueError:
        return CommandResult(Reply(f"{USAGE} (a quote is not closed)", ReplyKind.INVALID))
    if not words:
        return CommandResult(Reply(_in_force(context), ReplyKind.COMMAND))
    action, rest = words[0].lower(), words[1:]
    if action not in ("set", "unset") or not rest:
        return CommandResult(Reply(USAGE, ReplyKind.INVALID))
    refused = await refusal(context)
    if refused is not None:
        return CommandResult(refused)
    try:
        patch, removed = _parsed(action, rest, context)
    except BadInput as exc:
        return CommandResult(Reply(str(exc), ReplyKind.INVALID))
    await context.chat_settings.change(context.channel, context.scope, patch, removed)
    changed = [f"{key}={value}" for key, value in patch.items()] + [f"{k} unset" for k in removed]
    text = f"Saved for this {_place(context)}: {', '.join(changed)}."
    return CommandResult(Reply(text, ReplyKind.COMMAND))


def _parsed(
    action: str, rest: list[str], context: CommandContext
) -> tuple[dict[str, object], list[str]]:
    keys = setting_keys.ADMIN_KEYS
    if action == "set":
        return setting_keys.parse_assignments(rest, context.options.allowed_models, keys)
    unknown = [key for key in rest if key not in keys]
    if unknown:
        raise BadInput(f"unknown key {unknown[0]!r}; valid keys: {setting_keys.valid_keys(keys)}")
    return {}, list(dict.fromkeys(rest))


def _place(context: CommandContext) -> str:
    return "thread" if context.scope.thread_id else "chat"


def _in_force(context: CommandContext) -> str:
    here = context.channel_settings
    lines = [f"Settings of this {_place(context)}:"]
    lines.append(f"model: {context.model}")
    lines.append(f"conversation_mode: {'shared' if context.shared else 'per_user'}")
    for key in setting_keys.CHAT_KEYS:
        if key in ("default_model", "conversation_mode"):
            continue
        value = here.settings.get(key)
        lines.append(f"{key}: {'default' if value is None else value}")
    return "\n".join(lines)
