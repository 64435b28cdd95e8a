"""The one retry policy for Postgres: transient I/O only, bounded, jittered."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
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

from bot.errors import StoreConflict, StoreError, StoreFailed, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATE classes and codes worth another try: the connection, the server
# starting or stopping, too many clients, and conflicts a retry resolves.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "53300", "40001", "40P01")
_TRANSIENT_DRIVER_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection whose server went away between two uses can be left in a state
    # asyncpg refuses to work from; a fresh connection cures it.
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)


# What the store's work raises for Postgres: SQLAlchemy's wrappers, and asyncpg's own
# errors from the statements the warm path sends through asyncpg directly.
_DATABASE_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError)
_CONSTRAINT_VIOLATIONS = (IntegrityError, asyncpg.IntegrityConstraintViolationError)


def _driver_error(exc: BaseException) -> BaseException:
    """asyncpg's own error under SQLAlchemy's wrappers (or `exc` itself, unwrapped)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return exc.orig.__cause__ or exc.orig
    return exc


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, wrapped by SQLAlchemy or not."""
    state = getattr(_driver_error(exc), "sqlstate", None)
    if state is None and isinstance(exc, DBAPIError):
        state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry may cure; never for bad SQL or violated constraints."""
    if isinstance(exc, (PoolTimeout, *_TRANSIENT_DRIVER_ERRORS)):
        return True
    sqlstate = _sqlstate(exc)
    if sqlstate is not None and sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
        return True
    if isinstance(exc, DBAPIError):
        cause = exc.orig.__cause__ if exc.orig is not None else None
        if exc.connection_invalidated or isinstance(cause, _TRANSIENT_DRIVER_ERRORS):
            return True
        return isinstance(exc, InterfaceError | OperationalError) and sqlstate is None
    return False


class DatabaseRetry:
    """Runs a unit of database work, retrying transient failures within a deadline.

    The first attempt runs bare: building the tenacity policy costs more than a warm
    message's Python work on the store, and almost every attempt succeeds. A transient
    failure hands the rest of the attempts and the deadline to tenacity, whose first
    retry comes at once (the pool has dropped the dead connections) and the later
    ones after a jittered backoff.
    """

    def __init__(self, attempts: int, deadline: float, initial_wait: float = 0.05) -> None:
        self.attempts = attempts
        self.deadline = deadline
        self.initial_wait = initial_wait
        self.retries = 0  # attempts after a transient failure (bot_postgres_retries_total)

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        try:
            return await work()
        except _CONSTRAINT_VIOLATIONS as exc:
            raise _conflict(exc) from exc  # the query that hit it tells a race from a bug
        except (*_DATABASE_ERRORS, *_TRANSIENT_DRIVER_ERRORS) as exc:
            if not is_transient(exc) or self.attempts < 2:
                raise _failure(exc, attempts=1) from exc
            log.warning("retrying a Postgres call after %s", exc.__class__.__name__)
        return await self._retry(work, self.deadline - (time.monotonic() - started))

    async def _retry(self, work: Callable[[], Awaitable[T]], deadline: float) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.attempts - 1) | stop_after_delay(max(deadline, 0)),
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
            self.retries += 1
            return await work()

        try:
            return await retrying(attempt)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise _failure(cause, attempts=self.attempts) from cause
        except _CONSTRAINT_VIOLATIONS as exc:
            raise _conflict(exc) from exc
        except _DATABASE_ERRORS as exc:
            raise _failure(exc, attempts=self.attempts) from exc


@contextmanager
def errors_mapped() -> Iterator[None]:
    """Postgres errors of one attempt raised as ours, as the retry policy would after its
    last attempt: for work that is never retried (an operator's one-shot command)."""
    try:
        yield
    except _CONSTRAINT_VIOLATIONS as exc:
        raise _conflict(exc) from exc
    except (*_DATABASE_ERRORS, *_TRANSIENT_DRIVER_ERRORS) as exc:
        raise _failure(exc, attempts=1) from exc


def _failure(exc: BaseException | None, *, attempts: int) -> StoreError:
    """Our error for what the last attempt raised: unavailable if a retry might have
    cured it, refused otherwise."""
    if exc is None or is_transient(exc):
        name = exc.__class__.__name__ if exc else "unknown error"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return StoreUnavailable(f"Postgres unavailable{tries}: {name}")
    return StoreFailed(f"Postgres refused the work: {describe_failure(exc)}")


def _conflict(exc: BaseException) -> StoreConflict:
    constraint = getattr(_driver_error(exc), "constraint_name", None)
    return StoreConflict(
        f"Postgres refused the rows: {describe_failure(exc)}"
        + (f", constraint {constraint}" if constraint else ""),
        sqlstate=_sqlstate(exc),
        constraint=constraint,
    )


def describe_failure(exc: BaseException) -> str:
    """The driver's error class and SQLSTATE, never the server's text (it may quote data)."""
    sqlstate = _sqlstate(exc)
    name = _driver_error(exc).__class__.__name__
    return f"{name} (SQLSTATE {sqlstate})" if sqlstate else name
