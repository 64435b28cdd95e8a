"""Prometheus metrics of one worker, in a registry of its own (tests build several)."""

from __future__ import annotations

from collections import Counter as Tallies
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.tallies import CacheRead, Tally

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Every tally of the service (ConversationService.stats) but the cache reads, which
# are one counter with labels: its name on /metrics and what it counts.
EXPORTED: dict[Tally, tuple[str, str]] = {
    Tally.MAINTENANCE: (
        "bot_maintenance_replies_total",
        "Messages answered with the maintenance text (the maintenance flag)",
    ),
    Tally.MUTED: (
        "bot_muted_total",
        "Messages ignored: the replies_disabled flag is on, or their chat is muted",
    ),
    Tally.BLOCKED: (
        "bot_blocked_total",
        "Messages ignored because their writer is on the blocklist (bot ops user block)",
    ),
    Tally.INVALID: ("bot_invalid_input_total", "Messages refused as invalid input"),
    Tally.LOCK_TIMEOUT: (
        "bot_lock_timeouts_total",
        "Messages that waited too long for their turn",
    ),
    Tally.TURN_CONFLICT: (
        "bot_turn_conflicts_total",
        "Messages answered again: another handling stored a message of the conversation "
        "first (Redis lost the turn's lock: evicted, flushed, failed over, or away)",
    ),
    Tally.DUPLICATE: ("bot_deduplicated_total", "Redelivered platform events answered once"),
    Tally.CACHE_UNAVAILABLE: (
        "bot_redis_errors_total",
        "Messages handled without Redis (it failed, timed out, or the breaker was open)",
    ),
    Tally.STORE_UNAVAILABLE: (
        "bot_postgres_errors_total",
        "Messages Postgres could not store within the retry budget",
    ),
    Tally.STORE_FAILED: (
        "bot_postgres_refusals_total",
        "Messages Postgres refused to store for a reason a retry does not cure",
    ),
    Tally.RATE_LIMITED: ("bot_rate_limited_total", "Messages refused by the rate limit"),
    Tally.OVER_QUOTA: (
        "bot_over_quota_total",
        "Messages refused because the writer's or chat's token quota is used up",
    ),
    Tally.QUOTA_REBUILT: (
        "bot_quota_rebuilds_total",
        "Turns whose quota counters Redis did not hold (a new period, a flush, an outage): "
        "read from Postgres",
    ),
    Tally.COMMAND: ("bot_commands_total", "Chat commands answered (/help, /reset, ...)"),
    Tally.EXCHANGE: (
        "bot_exchanges_total",
        "Messages stored with their reply (or, if the responder failed, an apology)",
    ),
    Tally.RESPONDER_ERROR: (
        "bot_responder_errors_total",
        "Replies the responder failed to give",
    ),
    Tally.REPLY_RESENT: (
        "bot_replies_resent_total",
        "Stored replies sent again for a redelivered event whose first handling never finished",
    ),
    Tally.STREAMED: (
        "bot_streamed_replies_total",
        "Replies shown as they were written, then stored whole",
    ),
    Tally.INTERRUPTED: (
        "bot_interrupted_replies_total",
        "Streamed replies cut off (the LLM broke off, or the worker stopped): stored and "
        "shown with a note that they were interrupted",
    ),
    Tally.STALE_SESSION: (
        "bot_stale_sessions_total",
        "Cached sessions that named a closed or deleted conversation, rebuilt from Postgres",
    ),
    Tally.DEFERRED: (
        "bot_replies_deferred_total",
        "Replies the responder failed to give for now (timeout, 5xx, refused): the message "
        "kept in the inbox and answered on a later try",
    ),
    Tally.QUEUED: (
        "bot_inbox_queued_total",
        "Messages put back in the inbox behind an older one of their writer's that no "
        "handler was answering, answered in order by the sweep",
    ),
    Tally.MODERATION_ERROR: (
        "bot_moderation_errors_total",
        "Moderation checks that failed or timed out: the text passed (MODERATION_FAIL=open) "
        "or the user was told it cannot be checked now (closed)",
    ),
    Tally.RESUMED: (
        "bot_inbox_resumed_total",
        "Messages taken from the inbox by a sweep: their worker died, or they were put back",
    ),
    Tally.SUMMARISED: (
        "bot_summaries_total",
        "Summaries stored of long conversations' oldest messages (made in the background)",
    ),
    Tally.SUMMARY_FAILED: (
        "bot_summary_failures_total",
        "Summaries that could not be made (the responder failed) or stored (Postgres): the "
        "conversation's next message asks again",
    ),
    Tally.SUMMARY_SKIPPED: (
        "bot_summaries_skipped_total",
        "Summaries not started because SUMMARY_MAX_TASKS were running in the worker",
    ),
}


# Tallies exported as one labelled counter each: tally -> (name, help, label, value).
_REFUSALS_HELP = (
    "Messages (input) or replies (output) the moderation endpoint flagged: the user got a "
    "refusal (MODERATION)"
)
BY_LABEL: dict[Tally, tuple[str, str, str, str]] = {
    Tally.REFUSED_INPUT: ("bot_moderation_refusals", _REFUSALS_HELP, "direction", "input"),
    Tally.REFUSED_OUTPUT: ("bot_moderation_refusals", _REFUSALS_HELP, "direction", "output"),
}


class _TallyCollector(Collector):
    def __init__(self, tallies: Callable[[], Tallies[Tally]]) -> None:
        self._tallies = tallies

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._tallies()
        for tally, (name, help_text) in EXPORTED.items():
            family = CounterMetricFamily(name.removesuffix("_total"), help_text)
            family.add_metric([], stats.get(tally, 0))
            yield family
        yield from _labelled(stats)
        cache = CounterMetricFamily(
            "bot_cache_requests", "Hot-state reads by kind and result", labels=["kind", "result"]
        )
        for read in CacheRead:
            for result, hit in (("hit", True), ("miss", False)):
                cache.add_metric([read.value, result], stats.get(read.tally(hit), 0))
        yield cache


def _labelled(stats: Tallies[Tally]) -> Iterator[CounterMetricFamily]:
    families: dict[str, CounterMetricFamily] = {}
    for tally, (name, help_text, label, value) in BY_LABEL.items():
        family = families.get(name)
        if family is None:
            family = families[name] = CounterMetricFamily(name, help_text, labels=[label])
        family.add_metric([value], stats.get(tally, 0))
    yield from families.values()


class _CountsByLabel(Collector):
    """A counter kept elsewhere (a Counter by label value), read at each scrape."""

    def __init__(
        self,
        name: str,
        help_text: str,
        label: str | tuple[str, ...],
        counts: Callable[[], Mapping[Any, int]],
    ) -> None:
        self._name, self._help, self._counts = name, help_text, counts
        self._labels = [label] if isinstance(label, str) else list(label)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._help, labels=self._labels)
        for value, count in self._counts().items():
            family.add_metric(list(value) if isinstance(value, tuple) else [value], count)
        yield family


class _Count(Collector):
    """A count kept elsewhere, read at each scrape."""

    def __init__(self, name: str, help_text: str, count: Callable[[], int]) -> None:
        self._name, self._help, self._count = name, help_text, count

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._help, value=self._count())


class PoolUse(NamedTuple):
    """The Postgres connection pool at one instant (SQLAlchemy's QueuePool)."""

    size: int  # connections it keeps open (DB_POOL_SIZE)
    checked_out: int  # connections in use now
    overflow: int  # connections open beyond `size` now
    max_overflow: int  # how many it may open beyond `size` (DB_MAX_OVERFLOW)


_POOL_HELP = {
    "size": "Connections the Postgres pool keeps open (DB_POOL_SIZE)",
    "checked_out": "Postgres connections in use now",
    "overflow": "Postgres connections open beyond the pool size now",
    "max_overflow": "Connections the pool may open beyond its size (DB_MAX_OVERFLOW)",
}


class _PoolCollector(Collector):
    def __init__(self, use: Callable[[], PoolUse | None]) -> None:
        self._use = use

    def collect(self) -> Iterator[GaugeMetricFamily]:
        use = self._use()
        if use is None:  # a pool that keeps no connections: nothing to tell
            return
        for field, help_text in _POOL_HELP.items():
            yield GaugeMetricFamily(f"bot_postgres_pool_{field}", help_text, getattr(use, field))


class _CircuitCollector(Collector):
    def __init__(self, is_open: Callable[[], bool]) -> None:
        self._is_open = is_open

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "bot_redis_circuit_open",
            "1 while the Redis circuit breaker is open (answering from Postgres), else 0",
            value=1.0 if self._is_open() else 0.0,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages_in = Counter(
            "bot_messages_in", "Messages received", ["channel"], registry=self.registry
        )
        self.messages_out = Counter(
            "bot_messages_out", "Replies sent", ["channel"], registry=self.registry
        )
        self.reply_latency = Histogram(
            "bot_reply_latency_seconds",
            "Time from receiving a message to having its reply",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refused_at_shutdown = Counter(
            "bot_refused_at_shutdown",
            "Messages refused while the worker shut down (Slack and Telegram deliver them "
            "again; Discord does not)",
            ["channel"],
            registry=self.registry,
        )
        self.adapter_errors = Counter(
            "bot_adapter_errors",
            "Events an adapter failed to handle for an unexpected reason (a bug: see the logs)",
            ["channel"],
            registry=self.registry,
        )
        self.platform_rate_limited = Counter(
            "bot_platform_rate_limited",
            "Platform API calls that waited out the platform's rate limit (HTTP 429)",
            ["channel"],
            registry=self.registry,
        )
        self.first_text = Histogram(
            "bot_first_token_seconds",
            "Time from receiving a message to the first piece of its streamed reply shown",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stream_updates = Histogram(
            "bot_stream_updates_per_reply",
            "Platform updates (posts and edits) one streamed reply took",
            ["channel"],
            buckets=(1, 2, 3, 5, 8, 13, 21, 34, 55, 89),
            registry=self.registry,
        )
        self.feedback = Counter(
            "bot_feedback",
            "Users' ratings of replies recorded: rating good or bad (set or changed), or "
            "removed (taken back)",
            ["channel", "rating"],
            registry=self.registry,
        )
        self.orphans_ended = Counter(
            "bot_orphaned_streams_ended",
            "Replies a dead worker left streaming, ended by this one with the interrupted note",
            ["channel"],
            registry=self.registry,
        )
        self.responder_latency = Histogram(
            "bot_responder_latency_seconds",
            "Time the responder took for one reply",
            ["responder"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._upkeep()
        self._readiness()

    def _upkeep(self) -> None:
        """The scheduled upkeep of messages: partitions made, retention runs (bot/retention.py)."""
        self.partitions_created = Counter(
            "bot_partitions_created",
            "Monthly partitions of messages made ahead",
            registry=self.registry,
        )
        self.retention_runs = Counter(
            "bot_retention_runs", "Retention runs (RETENTION_DAYS) done by this worker",
            registry=self.registry,
        )  # fmt: skip
        self.retention_deleted = Counter(
            "bot_retention_deleted",
            "What retention deleted: messages, conversations, partitions (whole months)",
            ["what"],
            registry=self.registry,
        )
        self.retention_seconds = Gauge(
            "bot_retention_last_run_seconds", "How long the last retention run took",
            registry=self.registry,
        )  # fmt: skip

    def track_channel(self, channel: str) -> None:
        """Export the channel's series at zero from the start: a rate, a ratio or an
        alert over them works from the channel's first event, not its second."""
        for family in (
            self.messages_in, self.messages_out, self.reply_latency, self.refused_at_shutdown,
            self.adapter_errors, self.platform_rate_limited, self.first_text,
            self.stream_updates, self.orphans_ended,
        ):  # fmt: skip
            family.labels(channel)

    def _readiness(self) -> None:
        """What /readyz says, set at each scrape of /metrics (HealthServer)."""
        self.ready = Gauge(
            "bot_ready", "1 while /readyz answers 200 (ready), else 0", registry=self.registry
        )
        self.dependency_up = Gauge(
            "bot_dependency_up",
            "1 while /readyz finds Postgres or Redis usable, else 0 (down, or Redis degraded)",
            ["dependency"],
            registry=self.registry,
        )
        self.channel_connected = Gauge(
            "bot_channel_connected",
            "1 while the channel is connected to its platform, else 0",
            ["channel"],
            registry=self.registry,
        )

    def record_readiness(
        self, dependencies: Mapping[str, bool], channels: Mapping[str, bool]
    ) -> None:
        """Set the readiness gauges from one readiness check: ready when all are up."""
        for dependency, up in dependencies.items():
            self.dependency_up.labels(dependency).set(float(up))
        for channel, connected in channels.items():
            self.channel_connected.labels(channel).set(float(connected))
        self.ready.set(float(all(dependencies.values()) and all(channels.values())))

    def export_tallies(self, tallies: Callable[[], Tallies[Tally]]) -> None:
        self.registry.register(_TallyCollector(tallies))

    def export_circuit(self, is_open: Callable[[], bool]) -> None:
        self.registry.register(_CircuitCollector(is_open))

    def export_redis_faults(self, faults: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(
            _CountsByLabel(
                "bot_redis_faults",
                "Redis error replies that mean the deployment is wrong or the server cannot "
                "serve (a cluster node, a replica, a full Redis), by reason",
                "reason",
                faults,
            )
        )

    def export_redis_errors(self, errors: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(
            _CountsByLabel(
                "bot_redis_call_errors",
                "Redis calls that failed, by kind: timeout, connection, fault (see "
                "bot_redis_faults_total), refused (an error reply to one call), other, and "
                "circuit_open (not sent: the breaker was open)",
                "kind",
                errors,
            )
        )

    def export_tokens(self, tokens: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Tokens of the stored replies by (model, kind), kept by the service in memory."""
        self.registry.register(
            _CountsByLabel(
                "bot_llm_tokens",
                "LLM tokens of the replies stored, by the model that answered and kind: "
                "prompt or completion (as the API reported them, else estimated)",
                ("model", "kind"),
                tokens,
            )
        )

    def export_postgres_retries(self, retries: Callable[[], int]) -> None:
        self.registry.register(
            _Count(
                "bot_postgres_retries",
                "Postgres work tried again after a transient failure (each retry counted)",
                retries,
            )
        )

    def export_pool(self, use: Callable[[], PoolUse | None]) -> None:
        self.registry.register(_PoolCollector(use))

    def render(self) -> bytes:
        return generate_latest(self.registry)
