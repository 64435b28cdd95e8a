"""/help, /reset, /model and /history: the conversation of the place they are sent in."""

from __future__ import annotations

import re

from bot.commands.context import Command, CommandContext, CommandResult, refusal
from bot.domain import ContextMessage, Reply, ReplyKind, summary_label

HELP_TEXT = (
    "Commands:\n"
    "/help - this help\n"
    "/reset - forget this conversation and start a new one\n"
    "/model [name] - show the model I answer with, or choose one (/model default to clear)\n"
    "/history [n] - show the last n exchanges (default 5)\n"
    "/config [set key=value … | unset key …] - this chat's settings (its admins may change them)"
)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}$")
# ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_COUNT = re.compile(r"[0-9]{1,4}")
MAX_HISTORY = 50


async def help_(command: Command, context: CommandContext) -> CommandResult:
    return CommandResult(Reply(HELP_TEXT, ReplyKind.COMMAND))


async def reset(command: Command, context: CommandContext) -> CommandResult:
    session = await context.conversations.reset_conversation(
        context.session.user_id, context.channel, context.scope.key, context.shared
    )
    text = "Started a new conversation. I've forgotten what we talked about before."
    reply = Reply(text, ReplyKind.COMMAND, session.conversation_id)
    return CommandResult(reply, session, new_conversation=True)


async def model(command: Command, context: CommandContext) -> CommandResult:
    """In a private chat the writer's own preference; in a group or thread the model of
    the conversation there, which only the chat's admins may choose."""
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
    if context.scope.private:
        session = await context.conversations.set_preferred_model(context.session, wanted)
    elif (refused := await refusal(context)) is not None:
        return CommandResult(refused)
    else:
        session = await context.conversations.set_model_override(context.session, wanted)
    chosen = context.resolved(session)
    text = f"Okay, I'll answer with the model {chosen} from now on."
    if wanted is not None and chosen != wanted and session.pinned:
        text = f"Saved {wanted} as your model, but this conversation is pinned to {chosen}."
    elif wanted is not None and chosen != wanted:
        text = f"Saved {wanted} as your model, but for now you're trying out {chosen}."
    return CommandResult(Reply(text, ReplyKind.COMMAND, model=chosen), session)


async def history(command: Command, context: CommandContext) -> CommandResult:
    argument = command.argument or str(context.options.history_default)
    if not _COUNT.fullmatch(argument) or not 1 <= int(argument) <= MAX_HISTORY:
        text = f"Usage: /history [n], with n from 1 to {MAX_HISTORY}."
        return CommandResult(Reply(text, ReplyKind.INVALID))
    limit = 2 * int(argument)
    recent = await context.conversations.load_context(context.session.conversation_id, limit)
    messages = recent.messages
    if recent.summary is not None and len(messages) > limit:
        messages = messages[:-1]  # the summary covers what comes before the n asked for
    if not messages:
        return CommandResult(Reply("No messages in this conversation yet.", ReplyKind.COMMAND))
    return CommandResult(Reply(_format_history(messages), ReplyKind.COMMAND))


def _format_history(newest_first: list[ContextMessage]) -> str:
    return "\n".join(_history_line(m) for m in reversed(newest_first))


def _history_line(message: ContextMessage) -> str:
    when = f"[{message.timestamp:%Y-%m-%d %H:%M}]"
    if message.summary_of is not None:
        return f"{when} {summary_label(message.summary_of)} {message.content}"
    speaker = {"user": "you", "assistant": "bot", "system": "system"}
    return f"{when} {message.author or speaker.get(message.role, message.role)}: {message.content}"
