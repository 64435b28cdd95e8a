"""What a failed Redis call may leave behind, remembered until Redis can be fixed.

A script that timed out or failed half-way may still have taken a user's lock (and
an event's claim), and keys written while Redis was unreachable may predate what
Postgres now holds. Both are put right as soon as Redis answers: at once if it
refuses only one call, else by the guard's recovery hook, before any other call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from bot.cache.scripts import Abort
from bot.errors import CacheUnavailable

log = logging.getLogger(__name__)

Claim = Abort  # how to give up a turn that may have been taken: its lock, token and event
Forget = Callable[[list[str], list[Claim]], Awaitable[None]]

MAX_CLAIMS = 1000


class CacheRepair:
    def __init__(self, claim_lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.claim_lifetime = claim_lifetime  # after this, lock and claim expired by TTL
        self._clock = clock
        self._stale_keys: set[str] = set()
        self._claims: dict[str, tuple[Claim, float]] = {}

    def remember_claim(self, claim: Claim) -> None:
        now = self._clock()
        self._claims[claim.token] = (claim, now)
        if len(self._claims) > MAX_CLAIMS:
            self._claims = {t: c for t, c in self._claims.items() if self._live(c[1], now)}

    async def drop(self, keys: Iterable[str], token: str, forget: Forget) -> None:
        """Delete `keys` and give up the token's claim now, or remember both for later."""
        names = list(keys)
        claim = self._claims.pop(token, None)
        held: list[Claim] = [claim[0]] if claim else []
        if not names and not held:
            return
        try:
            await forget(names, held)
        except CacheUnavailable:
            self._stale_keys.update(names)
            if claim:
                self._claims[token] = claim

    async def recover(self, forget: Forget) -> None:
        """Put right everything remembered; for the guard's recovery hook."""
        keys, self._stale_keys = self._stale_keys, set()
        claims, self._claims = self._claims, {}
        now = self._clock()
        held = [claim for claim, since in claims.values() if self._live(since, now)]
        if not keys and not held:
            return
        try:
            await forget(list(keys), held)
        except BaseException:
            self._stale_keys.update(keys)
            self._claims.update(claims)
            raise
        log.info(
            "dropped %d cache keys and %d locks that predate writes made while Redis was away",
            len(keys),
            len(held),
        )

    def _live(self, since: float, now: float) -> bool:
        return now - since < self.claim_lifetime
