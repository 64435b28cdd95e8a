"""The chat commands, the same on every channel: /help, /reset, /model, /history."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot.cache.hotstate import Refresh
from bot.domain import ContextMessage, Reply, ReplyKind

if TYPE_CHECKING:
    from bot.service import ConversationService, Turn

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


async def run(command: Command, turn: Turn, service: ConversationService) -> tuple[Reply, Refresh]:
    handler = _HANDLERS.get(command.name)
    if handler is None:
        text = f"Unknown command /{command.name}. Try /help for the list of commands."
        return Reply(text, ReplyKind.COMMAND), turn.refresh
    return await handler(command, turn, service)


async def _help(
    command: Command, turn: Turn, service: ConversationService
) -> tuple[Reply, Refresh]:
    return Reply(HELP_TEXT, ReplyKind.COMMAND), turn.refresh


async def _reset(
    command: Command, turn: Turn, service: ConversationService
) -> tuple[Reply, Refresh]:
    session = await service.store.conversations.reset_conversation(
        turn.session.user_id, turn.message.channel
    )
    refresh = replace(turn.refresh, session=session, context=[], context_mode="replace")
    text = "Started a new conversation. I've forgotten what we talked about before."
    return Reply(text, ReplyKind.COMMAND, session.conversation_id), refresh


async def _model(
    command: Command, turn: Turn, service: ConversationService
) -> tuple[Reply, Refresh]:
    current = service.resolve_model(turn.session, turn.channel)
    if not command.argument:
        text = f"I'm answering with the model {current}. Change it with /model NAME."
        if service.settings.allowed_models:
            text += f" Available: {', '.join(service.settings.allowed_models)}."
        return Reply(text, ReplyKind.COMMAND, model=current), turn.refresh
    wanted = None if command.argument.lower() == "default" else command.argument
    if wanted is not None and not _MODEL_NAME.match(wanted):
        text = "That isn't a valid model name (letters, digits and . _ : / @ + -, at most 100)."
        return Reply(text, ReplyKind.INVALID), turn.refresh
    allowed = service.settings.allowed_models
    if wanted is not None and allowed and wanted not in allowed:
        text = f"The model {wanted} isn't available here. Choose one of: {', '.join(allowed)}."
        return Reply(text, ReplyKind.INVALID), turn.refresh
    session = await service.store.conversations.set_preferred_model(turn.session, wanted)
    model = service.resolve_model(session, turn.channel)
    text = f"Okay, I'll answer with the model {model} from now on."
    if wanted is not None and model != wanted:
        text = f"Saved {wanted} as your model, but this conversation is pinned to {model}."
    return Reply(text, ReplyKind.COMMAND, model=model), replace(turn.refresh, session=session)


async def _history(
    command: Command, turn: Turn, service: ConversationService
) -> tuple[Reply, Refresh]:
    argument = command.argument or str(service.settings.history_default)
    if not _COUNT.fullmatch(argument) or not 1 <= int(argument) <= MAX_HISTORY:
        text = f"Usage: /history [n], with n from 1 to {MAX_HISTORY}."
        return Reply(text, ReplyKind.INVALID), turn.refresh
    messages = await service.store.conversations.load_context(
        turn.session.conversation_id, 2 * int(argument)
    )
    if not messages:
        return Reply("No messages in this conversation yet.", ReplyKind.COMMAND), turn.refresh
    return Reply(_format_history(messages), ReplyKind.COMMAND), turn.refresh


def _format_history(newest_first: list[ContextMessage]) -> str:
    speaker = {"user": "you", "assistant": "bot", "system": "system"}
    lines = [
        f"[{m.timestamp:%Y-%m-%d %H:%M}] {speaker.get(m.role, m.role)}: {m.content}"
        for m in reversed(newest_first)
    ]
    return "\n".join(lines)


_HANDLERS = {"help": _help, "start": _help, "reset": _reset, "model": _model, "history": _history}
