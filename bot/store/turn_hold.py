"""The turn of a conversation, held in Postgres while a streamed reply is written.

Storing the user's message of a streamed exchange holds the conversation's turn for a
while (conversations.reply_due, revision 0006): no other message of the conversation
is stored meanwhile, whatever Redis forgot. The worker writing the reply renews the
hold every third of it, so a slow reply keeps it; storing the reply gives it back, and
so does `end` when no reply is stored. A worker that dies holds it no longer than one
hold, like its Redis lock.
"""

from __future__ import annotations

import logging
import uuid

from bot.errors import StoreError
from bot.local import Renewal
from bot.store.conversations import ConversationQueries

log = logging.getLogger(__name__)


class TurnHold:
    """Holds the turn of `conversation_id` for the reply to `user_message_id`."""

    def __init__(
        self,
        conversations: ConversationQueries,
        conversation_id: uuid.UUID,
        user_message_id: uuid.UUID,
        seconds: float,
    ) -> None:
        self._conversations = conversations
        self._conversation_id = conversation_id
        self._user_message_id = user_message_id
        self._seconds = seconds
        self._renewal = Renewal(self._renew, seconds / 3)

    async def _renew(self) -> bool:
        try:
            return await self._hold(self._seconds)
        except StoreError:
            return True  # Postgres is away; the next renewal may still come in time

    async def end(self, *, reply_stored: bool) -> None:
        """Stop renewing; give the turn back unless storing the reply did."""
        if (error := await self._renewal.stop()) is not None:
            log.error("holding the turn of conversation %s failed", self._conversation_id,
                      exc_info=error)  # fmt: skip
        if reply_stored:
            return
        try:
            await self._hold(None)
        except StoreError as exc:
            log.warning(
                "cannot give back the turn of conversation %s (%s): its next message "
                "waits until the hold lapses",
                self._conversation_id,
                exc,
            )

    async def _hold(self, seconds: float | None) -> bool:
        conversations, conversation = self._conversations, self._conversation_id
        return await conversations.hold_turn(conversation, self._user_message_id, seconds)
