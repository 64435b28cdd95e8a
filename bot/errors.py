"""The bot's exceptions: one type per failure a caller can act on.

Foreign errors (asyncpg, SQLAlchemy, redis-py, SDKs) are mapped to these where they
enter, carrying what the caller needs.
"""

from __future__ import annotations


class BotError(Exception):
    """Base of every error the bot raises on purpose."""


class ConfigError(BotError):
    """A setting is missing or invalid; the message names it and never holds a secret."""


class InfrastructureError(BotError):
    """Postgres or Redis could not be started or reached at start-up."""


class MigrationError(BotError):
    """The schema could not be brought to the current revision."""


class StoreError(BotError):
    """Postgres could not do the work asked of it; none of it was written."""


class StoreUnavailable(StoreError):
    """Postgres did not answer within the retry budget; nothing was written."""


class StoreFailed(StoreError):
    """Postgres refused the work for a reason a retry does not cure (a full disk, a bug).

    The message names the error class and SQLSTATE only: a server's error text may
    quote the data it refused.
    """


class StaleSession(BotError):
    """A cached session points at rows Postgres no longer holds (deleted or closed)."""


class CacheUnavailable(BotError):
    """Redis failed or timed out; callers fall back to Postgres."""


class LockTimeout(BotError):
    """The per-conversation lock was not acquired in time."""


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


class ResponderRejected(ResponderError):
    """The LLM API refused the request (a 4xx other than 429): retrying won't help."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
