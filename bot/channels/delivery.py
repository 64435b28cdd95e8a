"""Sending to a platform: its errors mapped to ours, and the one retry policy for them.

Adapters map their SDK's exceptions into PlatformRateLimited (carrying the
platform's retry-after), PlatformUnavailable (5xx, network) or PlatformRejected
(any other 4xx: not retried), then call `deliver`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from bot.errors import PlatformRateLimited, PlatformUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


_backoff = wait_exponential_jitter(multiplier=0.5, max=30, jitter=0.5)


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, PlatformRateLimited):
        return error.retry_after
    return float(_backoff(state))


def _before_retry(on_rate_limited: Callable[[], None] | None) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("platform call failed (%s); retry %d", error, state.attempt_number)
        if isinstance(error, PlatformRateLimited) and on_rate_limited is not None:
            on_rate_limited()

    return before_sleep


async def deliver(
    send: Callable[[], Awaitable[T]],
    *,
    attempts: int = 6,
    deadline: float = 120.0,
    on_rate_limited: Callable[[], None] | None = None,
) -> T:
    """Run one platform call, honouring rate limits and retrying outages, then giving up.

    `on_rate_limited` is called each time the call waits out the platform's retry-after.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception_type((PlatformRateLimited, PlatformUnavailable)),
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline),
        wait=_wait,
        before_sleep=_before_retry(on_rate_limited),
        reraise=True,
    )

    async def attempt() -> T:
        # tenacity awaits only what it recognises as a coroutine function
        return await send()

    return await retrying(attempt)
