"""What a chat command sees (a CommandContext: the session, the place's settings, the
few settings that shape its answers, and what it may change) and says back (a
CommandResult); the service turns that into what Redis is to hold."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.domain import (
    ChannelSettings,
    Permission,
    RecentContext,
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

    async def set_model_override(
        self, session: SessionState, model: str | None
    ) -> SessionState: ...

    async def load_context(self, conversation_id: uuid.UUID, limit: int) -> RecentContext: ...


class ChatSettingsEditor(Protocol):
    """Changing a chat's settings (bot/chat_configs.py): `/config set` and `unset`."""

    async def change(
        self, channel: str, scope: Scope, patch: dict[str, Any], removed: Sequence[str]
    ) -> object: ...


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
    channel_settings: ChannelSettings  # the place's, over its platform's
    conversations: Conversations
    chat_settings: ChatSettingsEditor
    # Whether the writer may configure this chat: the platform says (an admin); denied
    # in a private chat, unknown whenever the platform cannot be asked.
    may_configure: Callable[[], Awaitable[Permission]]
    options: CommandOptions
    variant_model: str | None = None  # an experiment's model for the writer, if one runs

    @property
    def model(self) -> str:
        return self.resolved(self.session)

    def resolved(self, session: SessionState) -> str:
        """The model `session` is answered with here (bot/domain.py, resolve_model)."""
        options, variant = self.options, self.variant_model
        return resolve_model(session, self.channel_settings, options.default_model, variant)


@dataclass(frozen=True, slots=True)
class CommandResult:
    reply: Reply
    session: SessionState | None = None  # the session after the command, if it changed
    new_conversation: bool = False  # a new, empty conversation was opened


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    argument: str


Handler = Callable[[Command, CommandContext], Awaitable[CommandResult]]

NOT_ALLOWED = "Only this chat's admins can change its settings."
NOT_CHECKED = (
    "I could not check with the platform whether you are an admin here, so nothing "
    "was changed. Please try again in a moment."
)


async def refusal(context: CommandContext) -> Reply | None:
    """Why the writer may not configure this chat, or None: they may."""
    permission = await context.may_configure()
    if permission is Permission.GRANTED:
        return None
    text = NOT_CHECKED if permission is Permission.UNKNOWN else NOT_ALLOWED
    return Reply(text, ReplyKind.INVALID)
