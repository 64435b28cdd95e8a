"""Users' ratings of replies (the feedback table, revision 0011), and the posts that
show each reply on a platform (reply_posts, revision 0012), which reactions name.

Every statement is one round trip with no BEGIN (Database.statement): each is atomic
by itself, and a retry finds what an earlier try did.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from bot.domain import Rating
from bot.store.database import Database

# $1 reply, $2 rater, $3 rating. Only a reply the bot stored is rated (no foreign key
# can say so: messages is partitioned). The rater's latest rating wins; one that does
# not change it writes nothing. Returns a row if a rating was stored or changed.
_RECORD = """
INSERT INTO feedback AS f (message_id, user_id, rating)
SELECT $1, $2, $3
WHERE EXISTS (SELECT 1 FROM messages WHERE id = $1 AND role = 'assistant')
ON CONFLICT (message_id, user_id) DO UPDATE
    SET rating = EXCLUDED.rating, updated_at = now()
    WHERE f.rating <> EXCLUDED.rating
RETURNING 1
"""

# $1 reply, $2 rater, $3 the rating taken back (NULL: whichever it is).
_REMOVE = """
DELETE FROM feedback
WHERE message_id = $1 AND user_id = $2 AND ($3::smallint IS NULL OR rating = $3)
RETURNING 1
"""

# $1 platform, $2 the rater's platform id.
_RATER = "SELECT id FROM users WHERE channel_type = $1 AND channel_user_id = $2"

# $1 platform, $2 chats, $3 posts, $4 replies: a batch of posts, each once.
_ADD_POSTS = """
INSERT INTO reply_posts (channel_type, chat_id, post_id, message_id)
SELECT $1, chat, post, reply
FROM unnest($2::text[], $3::text[], $4::uuid[]) AS t(chat, post, reply)
ON CONFLICT (channel_type, chat_id, post_id) DO NOTHING
"""

# $1 platform, $2 chat, $3 post.
_REPLY_OF = """
SELECT message_id FROM reply_posts WHERE channel_type = $1 AND chat_id = $2 AND post_id = $3
"""

# One post, as kept: (chat id, post id, the reply's messages.id).
Post = tuple[str, str, uuid.UUID]


class FeedbackQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def record(self, message_id: uuid.UUID, user_id: uuid.UUID, rating: Rating) -> bool:
        """Store `user_id`'s rating of the reply `message_id`; False if nothing changed
        (the same rating again) or it is no reply of the bot's."""
        found = await self._database.statement(_RECORD, message_id, user_id, int(rating))
        return found is not None

    async def remove(
        self, message_id: uuid.UUID, user_id: uuid.UUID, rating: Rating | None = None
    ) -> bool:
        """Delete `user_id`'s rating of the reply (only if it is `rating`, when given);
        False if there was none to delete."""
        taken_back = int(rating) if rating is not None else None
        found = await self._database.statement(_REMOVE, message_id, user_id, taken_back)
        return found is not None

    async def rater(self, channel: str, channel_user_id: str) -> uuid.UUID | None:
        """The users.id of a platform user; None for one who never wrote to the bot."""
        found = await self._database.statement(_RATER, channel, channel_user_id)
        return found[0] if found is not None else None

    async def add_posts(self, channel: str, posts: Sequence[Post]) -> None:
        """Keep which reply each post shows (a post kept already stays as it is)."""
        distinct = {(chat, post): reply for chat, post, reply in posts}
        chats, ids = [c for c, _ in distinct], [p for _, p in distinct]
        await self._database.statement(_ADD_POSTS, channel, chats, ids, list(distinct.values()))

    async def reply_of(self, channel: str, chat_id: str, post_id: str) -> uuid.UUID | None:
        """The stored reply a post of the bot's shows; None for any other message."""
        found = await self._database.statement(_REPLY_OF, channel, chat_id, post_id)
        return found[0] if found is not None else None
