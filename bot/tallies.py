"""What the conversation service counts: one name per outcome, shared by the service
(which counts), /metrics (which exports every one) and `bot ops stats` (which sums
them over workers in Redis)."""

from __future__ import annotations

from enum import StrEnum


class Tally(StrEnum):
    MAINTENANCE = "maintenance"  # answered with the maintenance text
    MUTED = "muted"  # ignored: replies_disabled, or a muted chat
    BLOCKED = "blocked"  # ignored: the writer is on the blocklist
    INVALID = "invalid"  # refused as invalid input
    LOCK_TIMEOUT = "lock_timeout"  # waited too long for the user's previous message
    TURN_CONFLICT = "turn_conflict"  # another handling stored a message first: answered again
    DUPLICATE = "duplicate"  # a redelivered event: answered once
    CACHE_UNAVAILABLE = "cache_unavailable"  # handled without Redis
    STORE_UNAVAILABLE = "store_unavailable"  # Postgres did not answer in time
    STORE_FAILED = "store_failed"  # Postgres refused the work
    RATE_LIMITED = "rate_limited"
    OVER_QUOTA = "over_quota"  # refused: the writer's or chat's token quota is used up
    QUOTA_REBUILT = "quota_rebuilt"  # quota counters Redis did not hold, read from Postgres
    COMMAND = "command"
    EXCHANGE = "exchange"  # a message and its reply (or apology) stored
    RESPONDER_ERROR = "responder_error"  # no reply from the responder: an apology
    REPLY_RESENT = "reply_resent"  # a stored reply sent again for an unfinished event
    STREAMED = "streamed"  # a reply shown as it was written, stored when done
    INTERRUPTED = "interrupted"  # a streamed reply cut off, stored and shown as such
    STALE_SESSION = "stale_session"  # a cached session named a closed conversation
    DEFERRED = "deferred"  # the responder failed for now: kept in the inbox, answered later
    QUEUED = "queued"  # behind an older event of its place nobody here answers: put back
    RESUMED = "resumed"  # taken from the inbox after its holder died or it was put back
    REFUSED_INPUT = "refused_input"  # moderation flagged the message: refused, nothing stored
    REFUSED_OUTPUT = "refused_output"  # moderation flagged the reply: a refusal stored instead
    MODERATION_ERROR = "moderation_error"  # the moderation endpoint failed (MODERATION_FAIL)
    SUMMARISED = "summarised"  # a long conversation's oldest part summarised, in the background
    SUMMARY_FAILED = "summary_failed"  # a summary could not be made or stored (tried again later)
    SUMMARY_SKIPPED = "summary_skipped"  # not started: SUMMARY_MAX_TASKS were running
    SESSION_HIT = "session_hit"
    SESSION_MISS = "session_miss"
    CONTEXT_HIT = "context_hit"
    CONTEXT_MISS = "context_miss"
    CHANNEL_CONFIG_HIT = "channel_config_hit"
    CHANNEL_CONFIG_MISS = "channel_config_miss"


class CacheRead(StrEnum):
    """The hot state the service reads from Redis, or else from Postgres."""

    SESSION = "session"
    CONTEXT = "context"
    CHANNEL_CONFIG = "channel_config"

    def tally(self, hit: bool) -> Tally:
        return _READS[self, hit]


# Looked up once per read on the warm path: a dict, not Tally(f"{kind}_hit") each time.
_READS = {
    (read, hit): Tally(f"{read.value}_{'hit' if hit else 'miss'}")
    for read in CacheRead
    for hit in (True, False)
}
