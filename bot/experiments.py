"""A/B model experiments: Postgres holds them, each worker keeps the running ones in
memory, and ops announce a change on Redis pub/sub (as for feature flags, bot/flags.py).

The definitions are small and change rarely, so a worker reads them from Postgres
(never on a message's path): at start, on an announcement on `experiments:invalidate`,
and every FLAGS_REFRESH_SECONDS in case one was lost (also after its subscription was
lost and made again). The service reads only the in-memory copy
(bot/experimentset.py). Ops create or stop one in Postgres, then announce it; a Redis
that cannot be told leaves the workers a refresh behind, never wrong for longer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from bot.cache.experiments import ExperimentCache
from bot.errors import CacheUnavailable, StoreUnavailable
from bot.experimentset import Experiment, ExperimentSet, Variant
from bot.mirror import Follower
from bot.store.experiments import ExperimentQueries

log = logging.getLogger(__name__)


class RunningExperiments(Follower):
    """One worker's running experiments: `current` is read by the service."""

    def __init__(
        self, cache: ExperimentCache, store: ExperimentQueries, refresh_seconds: float
    ) -> None:
        what = "the running experiments"
        super().__init__(cache.invalidations, cache.guard.op_timeout, refresh_seconds, what)
        self.cache = cache
        self.store = store
        self.current = ExperimentSet()

    async def load(self) -> ExperimentSet:
        """Reload from Postgres; an unreachable Postgres keeps the last known ones."""
        try:
            self.current = ExperimentSet.of(await self.store.running())
        except StoreUnavailable as exc:
            log.warning("cannot reload the running experiments (%s); keeping the last known", exc)
        return self.current


@dataclass(frozen=True, slots=True)
class ExperimentChange:
    experiment: Experiment
    notified: int | None  # workers that heard the announcement; None: not published
    publish_error: str | None = None  # why not (workers follow at their next refresh)


async def create_experiment(
    store: ExperimentQueries,
    cache: ExperimentCache,
    name: str,
    variants: Sequence[Variant],
    scope: str,
) -> ExperimentChange:
    """A new running experiment in Postgres (checked by the caller), then announced."""
    return await _announced(cache, await store.create(name, variants, scope))


async def stop_experiment(
    store: ExperimentQueries, cache: ExperimentCache, name: str
) -> ExperimentChange:
    """The experiment stopped in Postgres, then announced: its users go back to the
    usual model resolution."""
    return await _announced(cache, await store.stop(name))


async def _announced(cache: ExperimentCache, experiment: Experiment) -> ExperimentChange:
    try:
        return ExperimentChange(experiment, await cache.publish())
    except CacheUnavailable as exc:  # the caller tells the operator; nothing is lost
        return ExperimentChange(experiment, None, str(exc))
