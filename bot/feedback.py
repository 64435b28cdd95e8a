"""Users' ratings of the bot's replies, through each platform's own gesture (issue 18).

Two halves:

- **posted**: once an adapter delivered a reply, it names the platform messages that
  show it (a reply cut into parts has several; a streamed one the post it edited).
  Which reply each post shows goes to Postgres (reply_posts) off the user's wait, in
  one statement for all the posts delivered within POSTS_DELAY, as the inbox deletes
  what was delivered (bot/inbox.py).
- **rate**: an adapter hands over a FeedbackEvent (a 👍/👎 reaction set or taken back,
  a Slack feedback button clicked). The reply is the one its post shows (or the one
  Slack's button names); the rater is the users row of their platform id. A reaction
  on any other message, and one by a person who never wrote to the bot (no users row:
  none is made for a reaction), is ignored. The latest rating of a reply by a user
  wins; taking a reaction back deletes the rating.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from bot.domain import FeedbackEvent, FeedbackOutcome, PostRef
from bot.errors import StoreError
from bot.local import Batch
from bot.store.feedback import FeedbackQueries, Post

log = logging.getLogger(__name__)

POSTS_DELAY = 0.05  # s delivered posts wait for others to be written with


class Feedback:
    """This worker's side of the feedback (one per service)."""

    def __init__(self, queries: FeedbackQueries) -> None:
        self.queries = queries
        self._posts: Batch[tuple[str, Post]] = Batch(self._write, POSTS_DELAY)  # by platform

    # -- posted ----------------------------------------------------------------------

    def posted(self, channel: str, message_id: uuid.UUID, posts: Sequence[PostRef]) -> None:
        """`posts` on `channel` show the stored reply `message_id`: kept soon, batched."""
        self._posts.add(*((channel, (p.chat_id, p.post_id, message_id)) for p in posts))

    async def _write(self, pending: list[tuple[str, Post]]) -> None:
        by_channel: dict[str, list[Post]] = {}
        for channel, post in pending:
            by_channel.setdefault(channel, []).append(post)
        for channel, posts in by_channel.items():
            try:
                await self.queries.add_posts(channel, posts)
            except StoreError as exc:  # ratings of these replies' posts are then ignored
                log.warning("could not keep %d %s reply posts: %s", len(posts), channel, exc)

    async def flush(self) -> None:
        """Write the posts pending now, and wait for writes on their way (shutdown; and
        before a rating is looked up, so that a fast one finds its post)."""
        await self._posts.flush()

    # -- rate ------------------------------------------------------------------------

    async def rate(self, event: FeedbackEvent) -> FeedbackOutcome:
        """Store, change or delete a rating as the event says; StoreError if Postgres
        cannot be reached (the adapter lets the platform send the event again, if it
        does)."""
        reply = await self._reply(event)
        if reply is None:
            return FeedbackOutcome.IGNORED
        rater = await self.queries.rater(event.channel, event.channel_user_id)
        if rater is None:
            return FeedbackOutcome.IGNORED
        if event.rating is not None:
            stored = await self.queries.record(reply, rater, event.rating)
            return FeedbackOutcome.RATED if stored else FeedbackOutcome.IGNORED
        removed = await self.queries.remove(reply, rater, event.withdrawn)
        return FeedbackOutcome.REMOVED if removed else FeedbackOutcome.IGNORED

    async def _reply(self, event: FeedbackEvent) -> uuid.UUID | None:
        """The stored reply the event rates: named by it, or shown by its post."""
        if event.message_id is not None:
            return event.message_id
        if event.post is None:
            return None
        await self.flush()  # a post delivered a moment ago is then found (else: no-op)
        post = event.post
        return await self.queries.reply_of(event.channel, post.chat_id, post.post_id)
