"""The chat commands, the same on every channel: /help, /reset, /model, /history, and
/config in groups and threads (bot/commands/chat_config.py).

A command sees only what it needs (bot/commands/context.py) and says what changed; the
service turns that into what Redis is to hold.
"""

from __future__ import annotations

import re

from bot.commands import chat_config, conversation
from bot.commands.context import (
    ChatSettingsEditor,
    Command,
    CommandContext,
    CommandOptions,
    CommandResult,
    Conversations,
    Handler,
)
from bot.domain import Reply, ReplyKind

__all__ = [
    "ChatSettingsEditor",
    "Command",
    "CommandContext",
    "CommandOptions",
    "CommandResult",
    "Conversations",
    "parse",
    "run",
]

_COMMAND = re.compile(r"^/([A-Za-z0-9_]+)(?:@\S+)?(?:\s+(.*))?$", re.DOTALL)

_HANDLERS: dict[str, Handler] = {
    "help": conversation.help_,
    "start": conversation.help_,
    "reset": conversation.reset,
    "model": conversation.model,
    "history": conversation.history,
    "config": chat_config.config,
}


def parse(text: str) -> Command | None:
    """A command if the text is one (`/name [argument]`, `@botname` suffix allowed)."""
    match = _COMMAND.match(text)
    if match is None:
        return None
    return Command(match.group(1).lower(), (match.group(2) or "").strip())


async def run(command: Command, context: CommandContext) -> CommandResult:
    handler = _HANDLERS.get(command.name)
    if handler is None:
        text = f"Unknown command /{command.name}. Try /help for the list of commands."
        return CommandResult(Reply(text, ReplyKind.COMMAND))
    return await handler(command, context)
