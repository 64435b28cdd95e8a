"""Prometheus metrics of one worker, in a registry of its own (tests build several)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# The service's own tallies (ConversationService.stats), exported as counters.
_TALLIES = {
    "rate_limited": ("bot_rate_limited_total", "Messages refused by the rate limit"),
    "duplicate": ("bot_deduplicated_total", "Redelivered platform events answered once"),
    "invalid": ("bot_invalid_input_total", "Messages refused as invalid input"),
    "cache_unavailable": ("bot_redis_errors_total", "Redis calls that failed or timed out"),
    "store_unavailable": ("bot_postgres_errors_total", "Messages Postgres could not store"),
    "responder_error": ("bot_responder_errors_total", "Replies the responder failed to give"),
    "lock_timeout": ("bot_lock_timeouts_total", "Messages that waited too long for their turn"),
}
_CACHE_KINDS = ("session", "context", "channel_config")


class _TallyCollector(Collector):
    def __init__(self, tallies: Callable[[], Tally[str]]) -> None:
        self._tallies = tallies

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._tallies()
        for key, (name, help_text) in _TALLIES.items():
            family = CounterMetricFamily(name.removesuffix("_total"), help_text)
            family.add_metric([], stats.get(key, 0))
            yield family
        cache = CounterMetricFamily(
            "bot_cache_requests", "Hot-state reads by kind and result", labels=["kind", "result"]
        )
        for kind in _CACHE_KINDS:
            for result in ("hit", "miss"):
                cache.add_metric([kind, result], stats.get(f"{kind}_{result}", 0))
        yield cache


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
        self.responder_latency = Histogram(
            "bot_responder_latency_seconds",
            "Time the responder took for one reply",
            ["responder"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def export_tallies(self, tallies: Callable[[], Tally[str]]) -> None:
        self.registry.register(_TallyCollector(tallies))

    def render(self) -> bytes:
        return generate_latest(self.registry)
