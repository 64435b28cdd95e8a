"""The long-lived worker: channel adapters, supervised, over one asyncio loop.

Start-up: the health server, then every adapter under a supervisor that restarts
a crashed one with backoff without touching the others. Shutdown (SIGTERM/SIGINT,
or the end of a finite channel such as the console): stop taking new messages,
let the ones in flight finish (bounded by SHUTDOWN_GRACE_SECONDS), then close the
adapters; the caller closes the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Sequence

from redis.exceptions import RedisError

from bot.cache.streams import StreamLedger
from bot.channels.base import ChannelAdapter
from bot.channels.dispatch import Dispatcher
from bot.errors import BotError, ConfigError, CredentialsRejected, PlatformError
from bot.health import HealthServer
from bot.retention import Maintenance
from bot.service import INTERRUPTED_NOTE
from bot.store.inbox import Taken

log = logging.getLogger(__name__)

RESTART_BACKOFF_INITIAL = 1.0
RESTART_BACKOFF_MAX = 60.0
# A run that lasted this long was a working connection, not part of a crash loop: the
# next restart starts again from the initial delay.
STABLE_RUN_SECONDS = RESTART_BACKOFF_MAX
STATS_PUBLISH_SECONDS = 10.0  # how often tallies reach `bot ops stats`
# Handlings of one inbox event after which it is dropped: only a bug fails this often (a
# deferred reply is tried about 10 times in RESPONDER_RETRY_SECONDS, then apologised for).
INBOX_GIVE_UP_TRIES = 30
SWEEP_IN_FLIGHT = 32  # places answered from the inbox at once, at most


class Worker:
    def __init__(
        self,
        adapters: Sequence[ChannelAdapter],
        dispatcher: Dispatcher,
        health: HealthServer | None,
        shutdown_grace: float,
        restart_backoff: float = RESTART_BACKOFF_INITIAL,
        stats_interval: float = STATS_PUBLISH_SECONDS,
        stable_run: float = STABLE_RUN_SECONDS,
        maintenance: Maintenance | None = None,
    ) -> None:
        self.adapters = list(adapters)
        self.dispatcher = dispatcher
        self.health = health
        self.shutdown_grace = shutdown_grace
        self.restart_backoff = restart_backoff
        self.stats_interval = stats_interval
        self.stable_run = stable_run
        self.maintenance = maintenance
        self.restarts: dict[str, int] = {a.name: 0 for a in self.adapters}
        # The delays of the latest restarts per channel, for ops and tests.
        self.restart_delays: dict[str, deque[float]] = {
            a.name: deque(maxlen=32) for a in self.adapters
        }
        self._stop = asyncio.Event()
        self._rejected: set[str] = set()  # channels whose credentials were refused
        self._fatal: ConfigError | None = None  # why the worker cannot go on, if it cannot
        self._resuming: set[asyncio.Task[None]] = set()  # places answered from the inbox

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, host: str = "0.0.0.0", port: int = 8080) -> bool:
        """Serve until asked to stop; True if every in-flight message finished.

        ConfigError (after the shutdown) if the worker cannot serve as configured: a
        port is taken, or every channel's credentials were refused."""
        if self.health is not None:
            await self.health.start(host, port)
        self._install_signal_handlers()
        supervisors = [asyncio.create_task(self._supervise(a), name=a.name) for a in self.adapters]
        supervisors.append(asyncio.create_task(self._publish_stats(), name="stats"))
        if self.dispatcher.streams is not None:
            tending = self._tend_streams(self.dispatcher.streams)
            supervisors.append(asyncio.create_task(tending, name="streams"))
        if any(a.resumes for a in self.adapters):
            supervisors.append(asyncio.create_task(self._tend_inbox(), name="inbox"))
        if self.maintenance is not None:
            upkeep = self._maintain(self.maintenance)
            supervisors.append(asyncio.create_task(upkeep, name="maintenance"))
        try:
            await self._stop.wait()
        finally:
            drained = await self._shutdown(supervisors)
        if self._fatal is not None:
            raise self._fatal
        return drained

    async def _supervise(self, adapter: ChannelAdapter) -> None:
        loop = asyncio.get_running_loop()
        delay = self.restart_backoff
        incident = False  # this run of failures was already told with its traceback
        while not self._stop.is_set():
            started = loop.time()
            try:
                await adapter.run()
            except CredentialsRejected as exc:
                await self._give_up(adapter, exc)
                return
            except ConfigError as exc:  # e.g. its port is taken: no restart can cure that
                self._fatal = self._fatal or exc
                self.request_stop()
                return
            except Exception as exc:  # noqa: BLE001 - told by _tell_crash, then restarted
                lasted = loop.time() - started
                delay = self._next_delay(delay, lasted)
                incident = incident and lasted < self.stable_run
                self._tell_crash(adapter.name, exc, delay, first=not incident)
                incident = True
            else:
                if adapter.finite or self._stop.is_set():
                    self.request_stop()
                    return
                delay = self._next_delay(delay, loop.time() - started)
                log.error("channel %s stopped by itself; restarting in %.1f s", adapter.name, delay)
            await self._close(adapter)
            self.restarts[adapter.name] += 1
            self.restart_delays[adapter.name].append(delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, RESTART_BACKOFF_MAX)

    @staticmethod
    def _tell_crash(name: str, exc: Exception, delay: float, *, first: bool) -> None:
        """One line per failed run, with its cause and the next delay. A crash that is
        not the platform's (a bug) has its traceback told once per incident; the others
        only at DEBUG."""
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        trace = log.isEnabledFor(logging.DEBUG) or (first and not isinstance(exc, PlatformError))
        level = logging.ERROR if first else logging.WARNING
        again = "is down" if first else "failed again"
        log.log(
            level,
            "channel %s %s (%s); restarting in %.1f s",
            name,
            again,
            cause,
            delay,
            exc_info=exc if trace else None,
        )

    async def _give_up(self, adapter: ChannelAdapter, exc: CredentialsRejected) -> None:
        """A channel whose credentials are refused stays down; the worker goes on with the
        others, and stops (exit 2) when none is left."""
        log.error("channel %s stopped: %s; %s, then restart the worker", adapter.name, exc, exc.fix)
        await self._close(adapter)
        self._rejected.add(adapter.name)
        if all(a.name in self._rejected for a in self.adapters if not a.finite):
            self._fatal = self._fatal or ConfigError(f"no channel left to serve: {exc}; {exc.fix}")
            self.request_stop()

    def _next_delay(self, delay: float, lasted: float) -> float:
        """The wait before the next run: back to the start after a run that held up."""
        return self.restart_backoff if lasted >= self.stable_run else delay

    async def _publish_stats(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.stats_interval)
            await self.dispatcher.service.publish_stats()

    async def _maintain(self, maintenance: Maintenance) -> None:
        """Partitions ahead and retention (bot/retention.py): at start, then each interval."""
        while not self._stop.is_set():
            try:
                await maintenance.tick()
            except BotError as exc:
                log.warning("upkeep of messages failed, tried again in %g s: %s",
                            maintenance.interval, exc)  # fmt: skip
            except Exception:  # a bug must not end the upkeep for the worker's life
                log.exception("upkeep of messages failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), maintenance.interval)

    async def _tend_inbox(self) -> None:
        """Renew the leases of the events this worker answers, and answer those whose
        worker died or that were put back (bot/inbox.py): at start, then every
        INBOX_SWEEP_SECONDS (or a third of a lease, if shorter)."""
        service = self.dispatcher.service
        inbox, settings = service.inbox, service.settings
        interval = min(settings.inbox_sweep_seconds, inbox.lease / 3)
        while not self._stop.is_set():
            try:
                await inbox.renew()
                await self._sweep()
            except BotError as exc:
                log.warning("inbox not tended, tried again in %g s: %s", interval, exc)
            except Exception:  # a bug must not end the tending for the worker's life
                log.exception("inbox not tended")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _sweep(self) -> None:
        room = SWEEP_IN_FLIGHT - len(self._resuming)
        ready = {a.name: a for a in self.adapters if a.resumes and a.connected}
        if room <= 0 or not ready or self.dispatcher.closing:
            return
        for taken in await self.dispatcher.service.inbox.take(list(ready), room):
            task = asyncio.create_task(self._resume_place(ready, taken), name="resume")
            self._resuming.add(task)
            task.add_done_callback(self._resuming.discard)

    async def _resume_place(self, adapters: dict[str, ChannelAdapter], taken: Taken) -> None:
        """Answer the taken event, then the next ones of its place, in order."""
        service = self.dispatcher.service
        next_one: Taken | None = taken
        try:
            while next_one is not None and not self.dispatcher.closing:
                if next_one.tries > INBOX_GIVE_UP_TRIES:
                    await self._give_up_on(next_one)
                else:
                    message = service.adopt(next_one)
                    log.info("answering a %s message left in the inbox (%s)", message.channel,
                             message.platform_message_id)  # fmt: skip
                    await adapters[message.channel].resume(message)
                next_one = await service.inbox.take_next(next_one.place, list(adapters))
        except BotError as exc:  # it lapses, and a sweep takes it again
            log.warning("a message from the inbox was not answered: %s", exc)
        except Exception:
            log.exception("a message from the inbox was not answered")

    async def _give_up_on(self, taken: Taken) -> None:
        """An event every handling of which failed (a bug: a deferred reply ends with the
        apology in time): dropped, so that it stops holding up its place, and told."""
        message = taken.message
        log.error(
            "dropped a %s message from the inbox after %d failed tries (event %s of %s)",
            message.get("channel"), taken.tries - 1, message.get("platform_message_id"),
            message.get("channel_user_id"),
        )  # fmt: skip
        await self.dispatcher.service.inbox.drop(taken)

    async def _tend_streams(self, streams: StreamLedger) -> None:
        """Renew the leases of this worker's streaming replies, and end those of dead
        workers (bot/cache/streams.py), three times a lease."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), streams.lease / 3)
            try:
                await streams.renew()
                for adapter in self.adapters:
                    if adapter.connected:  # else its platform can't be told: left for later
                        await self._end_orphans(streams, adapter)
            except RedisError as exc:
                log.warning("streaming replies not tended: %s", exc)
            except Exception:  # a bug must not end the tending for the worker's life
                log.exception("streaming replies not tended")

    async def _end_orphans(self, streams: StreamLedger, adapter: ChannelAdapter) -> None:
        for orphan in await streams.orphans(adapter.name):
            try:
                await adapter.end_stream(orphan, INTERRUPTED_NOTE)
            except PlatformError as exc:
                log.warning("a reply left streaming on %s was not ended: %s", adapter.name, exc)
                continue
            self.dispatcher.metrics.orphans_ended.labels(adapter.name).inc()
            log.info("ended a reply a dead worker left streaming on %s", adapter.name)

    async def _shutdown(self, supervisors: list[asyncio.Task[None]]) -> bool:
        log.info("shutting down: finishing %d message(s) in flight", self.dispatcher.in_flight)
        self.dispatcher.close()
        drained = await self.dispatcher.drain(self.shutdown_grace)
        for adapter in self.adapters:
            await self._close(adapter)
        for task in (*supervisors, *self._resuming):
            task.cancel()
        await asyncio.gather(*supervisors, *self._resuming, return_exceptions=True)
        await self.dispatcher.service.close()
        if self.health is not None:
            await self.health.stop()
        self._remove_signal_handlers()
        log.info("stopped")
        return drained

    async def _close(self, adapter: ChannelAdapter) -> None:
        try:
            await adapter.stop()
        except Exception:
            log.exception("channel %s failed to stop cleanly", adapter.name)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.request_stop)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
