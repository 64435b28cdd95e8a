"""The chat commands, the same on every channel: /help, /reset, /model, /history.

A command sees only what it needs (a CommandContext: the session, the channel's
settings, the few settings that shape its answers, and the conversation queries it may
run) and says what changed (a CommandResult); the service turns that into what Redis
is to hold.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.domain import (
    ChannelSettings,
    ContextMessage,
    Reply,
    ReplyKind,
    Scope,
    SessionState,
    resolve_model,
)


class Conversations(Protocol):
    """The conversation queries a command may run (the store's)."""

    async def reset_conversation(
        self, user_id: uuid.UUID, channel: str, scope: str, shared: bool
    ) -> SessionState: ...

    async def set_preferred_model(
        self, session: SessionState, model: str | None
    ) -> SessionState: ...

    async def load_context(
        self, conversation_id: uuid.UUID, limit: int
    ) -> list[ContextMessage]: ...


@dataclass(frozen=True, slots=True)
class CommandOptions:
    """The settings commands answer by."""

    default_model: str
    allowed_models: tuple[str, ...]
    history_default: int


@dataclass(frozen=True, slots=True)
class CommandContext:
    channel: str
    scope: Scope  # where the command was sent: /reset and /history act there only
    shared: bool  # the place's shared conversation, everyone's
    session: SessionState
    channel_settings: ChannelSettings
    conversations: Conversations
    options: CommandOptions

    @property
    def model(self) -> str:
        return resolve_model(self.session, self.channel_settings, self.options.default_model)


@dataclass(frozen=True, slots=True)
class CommandResult:
    reply: Reply
    session: SessionState | None = None  # the session after the command, if it changed
    new_conversation: bool = False  # a new, empty conversation was opened


HELP_TEXT = (
    "Commands:\n"
    "/help - this help\n"
    "/reset - forget this conversation and start a new one\n"
    "/model [name] - show the model I answer with, or choose one (/model default to clear)\n"
    "/history [n] - show the last n exchanges (default 5)"
)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}$")
_COMMAND = re.compile(r"^/([A-Za-z0-9_]+)(?:@\S+)?(?:\s+(.*))?$", re.DOTALL)
# ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_COUNT = re.compile(r"[0-9]{1,4}")
MAX_HISTORY = 50


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    argument: str


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


async def _help(command: Command, context: CommandContext) -> CommandResult:
    return CommandResult(Reply(HELP_TEXT, ReplyKind.COMMAND))


async def _reset(command: Command, context: CommandContext) -> CommandResult:
    session = await context.conversations.reset_conversation(
        context.session.user_id, context.channel, context.scope.key, context.shared
    )
    text = "Started a new conversation. I've forgotten what we talked about before."
    reply = Reply(text, ReplyKind.COMMAND, session.conversation_id)
    return CommandResult(reply, session, new_conversation=True)


async def _model(command: Command, context: CommandContext) -> CommandResult:
    allowed = context.options.allowed_models
    if not command.argument:
        current = context.model
        text = f"I'm answering with the model {current}. Change it with /model NAME."
        if allowed:
            text += f" Available: {', '.join(allowed)}."
        return CommandResult(Reply(text, ReplyKind.COMMAND, model=current))
    wanted = None if command.argument.lower() == "default" else command.argument
    if wanted is not None and not _MODEL_NAME.match(wanted):
        text = "That isn't a valid model name (letters, digits and . _ : / @ + -, at most 100)."
        return CommandResult(Reply(text, ReplyKind.INVALID))
    if wanted is not None and allowed and wanted not in allowed:
        text = f"The model {wanted} isn't available here. Choose one of: {', '.join(allowed)}."
        return CommandResult(Reply(text, ReplyKind.INVALID))
    session = await context.conversations.set_preferred_model(context.session, wanted)
    model = resolve_model(session, context.channel_settings, context.options.default_model)
    text = f"Okay, I'll answer with the model {model} from now on."
    if wanted is not None and model != wanted:
        text = f"Saved {wanted} as your model, but this conversation is pinned to {model}."
    return CommandResult(Reply(text, ReplyKind.COMMAND, model=model), session)


async def _history(command: Command, context: CommandContext) -> CommandResult:
    argument = command.argument or str(context.options.history_default)
    if not _COUNT.fullmatch(argument) or not 1 <= int(argument) <= MAX_HISTORY:
        text = f"Usage: /history [n], with n from 1 to {MAX_HISTORY}."
        return CommandResult(Reply(text, ReplyKind.INVALID))
    messages = await context.conversations.load_context(
        context.session.conversation_id, 2 * int(argument)
    )
    if not messages:
        return CommandResult(Reply("No messages in this conversation yet.", ReplyKind.COMMAND))
    return CommandResult(Reply(_format_history(messages), ReplyKind.COMMAND))


def _format_history(newest_first: list[ContextMessage]) -> str:
    speaker = {"user": "you", "assistant": "bot", "system": "system"}
    lines = [
        f"[{m.timestamp:%Y-%m-%d %H:%M}] {m.author or speaker.get(m.role, m.role)}: {m.content}"
        for m in reversed(newest_first)
    ]
    return "\n".join(lines)


Handler = Callable[[Command, CommandContext], Awaitable[CommandResult]]
_HANDLERS: dict[str, Handler] = {
    "help": _help,
    "start": _help,
    "reset": _reset,
    "model": _model,
    "history": _history,
}
