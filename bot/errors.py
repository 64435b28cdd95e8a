"""Every error the bot raises on purpose, in one tree.

Foreign errors (asyncpg, SQLAlchemy, redis-py, the platform SDKs, the LLM API) are
mapped to these where they enter, carrying what a caller needs (a status, a
retry-after, a SQLSTATE) and never a secret or a server's quote of the data:

    BotError
    ├── ConfigError              a setting is missing or invalid (names the setting)
    ├── InfrastructureError      Postgres or Redis cannot be started or reached at start-up
    │   └── EmbeddedServerError  an embedded server would not start, stop or answer
    ├── MigrationError           the schema cannot be brought to the current revision
    ├── BenchError               `bot bench --streaming` could not measure (no reply came)
    ├── InvalidInput             a user's message cannot be handled; the text says why
    ├── OperatorError            an operator's command cannot be carried out (bot ops)
    │   ├── BadInput             an argument is not valid (exit code 2)
    │   │   ├── FlagError        a feature flag's name or value is not valid
    │   │   └── ExperimentError  an experiment's name, variants or shares are not valid
    │   ├── ExperimentConflict   an experiment's name is taken, or its scope has one running
    │   ├── NotFound             what the command names does not exist (exit code 1)
    │   └── NotConfirmed         the operator answered no to a deletion (exit code 1)
    ├── StoreError               Postgres did not do the work; none of it was written
    │   ├── StoreUnavailable     not within the retry budget (down, hung, restarting)
    │   ├── StoreFailed          refused for a reason a retry does not cure
    │   │   └── StoreConflict    a constraint refused the rows (a race, or a bug)
    │   ├── StaleSession         a cached session names a conversation that is gone
    │   └── TurnConflict         the conversation moved on since its context was read
    ├── CacheUnavailable         Redis failed, timed out or refused; fall back to Postgres
    │   ├── CacheRefused         Redis answered with an error for this one call
    │   └── CircuitOpen          not even tried: Redis failed moments ago
    ├── LockTimeout              a user's previous message held the turn for too long
    ├── ResponderError           no reply from the responder
    │   ├── ResponderTimeout     the LLM API did not answer in time (retried)
    │   ├── ResponderUnavailable 429, 5xx or the connection broke (retried)
    │   │   └── ResponderUnreachable nothing accepts the connection, or the host name does
    │   │                            not resolve (retried LLM_CONNECT_ATTEMPTS times only)
    │   ├── ResponderRejected    any other 4xx (not retried)
    │   └── ResponderInterrupted a stream broke off after some of it was given out
    ├── ModerationUnavailable    the moderation endpoint failed or timed out (MODERATION_FAIL)
    ├── ReplyDeferred            the responder failed for now: the message is answered on a
    │                            later try, from the inbox (bot/inbox.py)
    ├── PlatformError            a platform API call failed
    │   ├── PlatformRateLimited  429: wait `retry_after` seconds (retried)
    │   ├── PlatformUnavailable  5xx or the network (retried)
    │   └── PlatformRejected     any other refusal: a bad token, an unknown chat
    ├── WebhookRefused           a webhook request refused with a 4xx before any SDK saw it
    └── ShuttingDown             the worker takes no new messages
"""

from __future__ import annotations


class BotError(Exception):
    """Base of every error the bot raises on purpose."""


class ConfigError(BotError):
    """A setting is missing or invalid; the message names it and never holds a secret."""


class InfrastructureError(BotError):
    """Postgres or Redis could not be started or reached at start-up."""


class EmbeddedServerError(InfrastructureError):
    """An embedded server could not be started, stopped or reached."""


class MigrationError(BotError):
    """The schema could not be brought to the current revision."""


class BenchError(BotError):
    """The streaming bench could not measure: a reply never came, or the SDK broke a
    platform's spec."""


class InvalidInput(BotError):
    """The message cannot be handled; the text says why, for the user."""


class OperatorError(BotError):
    """An operator's command cannot be carried out; the message says why."""


class BadInput(OperatorError):
    """An argument an operator gave is not valid; the message says what is (exit code 2)."""


class FlagError(BadInput):
    """A flag name or value an operator gave is not valid."""


class ExperimentError(BadInput):
    """An experiment an operator described is not valid (its name, variants, shares)."""


class ExperimentConflict(OperatorError):
    """An experiment cannot be created or stopped as asked: its name is taken, another
    runs in its scope, or it is stopped already."""


class NotFound(OperatorError):
    """What the command was asked about does not exist (exit code 1)."""


class NotConfirmed(OperatorError):
    """The operator did not confirm a deletion at the prompt: nothing was changed (exit
    code 1). A deletion without a terminal to ask on and without --yes is BadInput."""


class StoreError(BotError):
    """Postgres could not do the work asked of it; none of it was written."""


class StoreUnavailable(StoreError):
    """Postgres did not answer within the retry budget; nothing was written."""


class StoreFailed(StoreError):
    """Postgres refused the work for a reason a retry does not cure (a full disk, a bug).

    The message names the error class and SQLSTATE only: a server's error text may
    quote the data it refused.
    """


class StoreConflict(StoreFailed):
    """A constraint refused the rows: `sqlstate` tells which kind (23503 a foreign key,
    23505 a unique key, …) and `constraint` its name, so that the query that hit it can
    tell a race it expects from a bug."""

    def __init__(self, message: str, *, sqlstate: str | None, constraint: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.constraint = constraint


class StaleSession(StoreError):
    """A cached session points at rows Postgres no longer holds (deleted or closed)."""


class TurnConflict(StoreError):
    """The conversation moved on since its context was read: another handling stored a
    message (`held`: and is writing the reply to it now). Nothing was stored; the
    message is answered again on the newer context (bot/service.py)."""

    def __init__(self, conversation_id: object, *, held: bool) -> None:
        state = "is answering a message" if held else "has stored a message since"
        super().__init__(f"another handling of conversation {conversation_id} {state}")
        self.conversation_id = conversation_id
        self.held = held


class ModerationUnavailable(BotError):
    """The moderation endpoint did not say whether a text is flagged (it failed, refused
    or timed out within MODERATION_TIMEOUT_SECONDS): MODERATION_FAIL decides."""


class CacheUnavailable(BotError):
    """Redis failed or timed out; callers fall back to Postgres."""


class CacheRefused(CacheUnavailable):
    """Redis answered this call with an error reply (a key of the wrong type, a script
    failing half-way): the server is up, and the breaker stays closed."""


class CircuitOpen(CacheUnavailable):
    """The call never reached Redis: the breaker is open after a recent failure."""


class LockTimeout(BotError):
    """The per-user lock was not acquired in time."""


class ResponderError(BotError):
    """The responder could not produce a reply."""


class ResponderTimeout(ResponderError):
    """The LLM API did not answer within the timeout: worth another try."""


class ResponderUnavailable(ResponderError):
    """The LLM API is busy (429), failing (5xx) or unreachable: worth another try."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds the API asked us to wait, if it said


class ResponderUnreachable(ResponderUnavailable):
    """Nothing accepts the connection (refused) or the host name does not resolve: a
    server that is not running or a wrong LLM_BASE_URL far more often than a blip, so
    it is tried LLM_CONNECT_ATTEMPTS times, not until the deadline."""


class ResponderRejected(ResponderError):
    """The LLM API refused the request (a 4xx other than 429): retrying won't help."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ResponderInterrupted(ResponderError):
    """A streamed reply broke off (dropped, stalled, out of time) after `partial` was
    given out: never retried, which would give the text out twice."""

    def __init__(self, message: str, *, partial: str) -> None:
        super().__init__(message)
        self.partial = partial


class ReplyDeferred(BotError):
    """The reply is left to a later try (bot/inbox.py): the responder failed for now."""

    def __init__(self, after: float, cause: ResponderError) -> None:
        super().__init__(f"reply deferred for {after:g} s: {cause}")
        self.after = after
        self.cause = cause


class PlatformError(BotError):
    """A platform API call failed."""


class PlatformRateLimited(PlatformError):
    def __init__(self, retry_after: float, detail: str = "") -> None:
        super().__init__(f"rate limited, retry after {retry_after:g} s {detail}".strip())
        self.retry_after = retry_after


class PlatformUnavailable(PlatformError):
    """Server error or network failure: worth another try."""


class PlatformRejected(PlatformError):
    """The platform refused the call (bad token, unknown chat, ...): retrying won't help.
    `code` is the platform's own name for the refusal, where it gives one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class CredentialsRejected(PlatformRejected):
    """The platform refused the bot's credentials (or its account setup) for good: the
    channel is not restarted until `fix` is done."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class WebhookRefused(BotError):
    """A webhook request refused before any SDK code saw it; `status` is the 4xx to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ShuttingDown(BotError):
    """The worker is stopping and takes no new messages."""
