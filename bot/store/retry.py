"""The one retry policy for Postgres: transient I/O only, bounded, jittered."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryError,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from bot.errors import StoreFailed, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATE classes and codes worth another try: the connection, the server
# starting or stopping, too many clients, and conflicts a retry resolves.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "53300", "40001", "40P01")
_TRANSIENT_DRIVER_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry may cure; never for bad SQL or violated constraints."""
    if isinstance(exc, PoolTimeout | OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        cause = exc.orig.__cause__ if exc.orig is not None else None
        sqlstate = getattr(cause, "sqlstate", None) or getattr(exc.orig, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
            return True
        if isinstance(cause, _TRANSIENT_DRIVER_ERRORS):
            return True
        return isinstance(exc, InterfaceError | OperationalError) and sqlstate is None
    return False


class DatabaseRetry:
    """Runs a unit of database work, retrying transient failures within a deadline."""

    def __init__(self, attempts: int, deadline: float, initial_wait: float = 0.05) -> None:
        self.attempts = attempts
        self.deadline = deadline
        self.initial_wait = initial_wait

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline),
            wait=wait_exponential_jitter(
                multiplier=self.initial_wait, max=2.0, jitter=self.initial_wait
            ),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=False,
        )

        async def attempt() -> T:
            # tenacity awaits only what it recognizes as a coroutine function; any
            # other callable (a lambda returning a coroutine) would be "called" once,
            # never awaited nor retried.
            return await work()

        try:
            return await retrying(attempt)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            name = cause.__class__.__name__ if cause else "unknown error"
            raise StoreUnavailable(f"Postgres unavailable after retries: {name}") from cause
        except IntegrityError:
            raise  # a violated constraint: the query that hit it tells a race from a bug
        except SQLAlchemyError as exc:
            raise StoreFailed(f"Postgres refused the work: {describe_failure(exc)}") from exc


def describe_failure(exc: SQLAlchemyError) -> str:
    """The driver's error class and SQLSTATE, never the server's text (it may quote data)."""
    orig = getattr(exc, "orig", None)
    cause = (orig.__cause__ or orig) if orig is not None else exc
    sqlstate = getattr(cause, "sqlstate", None) or getattr(orig, "sqlstate", None)
    name = cause.__class__.__name__
    return f"{name} (SQLSTATE {sqlstate})" if isinstance(sqlstate, str) else name
