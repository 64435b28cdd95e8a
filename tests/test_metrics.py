"""Every tally the service counts reaches /metrics, under its own name."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import EXPORTED, Metrics
from bot.tallies import CacheRead, Tally


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_every_tally_is_exported_with_its_count() -> None:
    stats: Counter[Tally] = Counter({tally: n for n, tally in enumerate(Tally, start=1)})
    metrics = Metrics()
    metrics.export_tallies(lambda: stats)

    found = samples(metrics)

    cache_reads = {read.tally(hit) for read in CacheRead for hit in (True, False)}
    assert set(EXPORTED) | cache_reads == set(Tally)  # each tally has one home on /metrics
    for tally, (name, _) in EXPORTED.items():
        assert found[(name, ())] == stats[tally], name
    for read in CacheRead:
        for result, hit in (("hit", True), ("miss", False)):
            labels = (("kind", read.value), ("result", result))
            assert found[("bot_cache_requests_total", labels)] == stats[read.tally(hit)]


def test_the_circuit_breaker_state_is_a_gauge() -> None:
    state = {"open": False}
    metrics = Metrics()
    metrics.export_circuit(lambda: state["open"])

    assert samples(metrics)[("bot_redis_circuit_open", ())] == 0
    state["open"] = True
    assert samples(metrics)[("bot_redis_circuit_open", ())] == 1
