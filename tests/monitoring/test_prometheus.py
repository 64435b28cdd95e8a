"""A real Prometheus scrapes a real worker's /metrics: every query of the Grafana
dashboard (deploy/grafana/dashboards/chatbot.json) returns data, and every alert rule
loads, evaluates, and reads only series the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bot.channels.dispatch import Dispatcher
from bot.health import HealthServer
from bot.metrics import Metrics
from tests.monitoring.prometheus_server import ALERTS, Prometheus, prometheus_scraping
from tests.support import ROOT, ServiceFactory, msg, new_user
from tests.test_worker import QueueChannel

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "chatbot.json"
# Grafana's interval variables, as Grafana would fill them in for a 1 s scrape.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "1s"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def graphs() -> list[dict[str, Any]]:
    """The dashboard's panels that show data (not its rows)."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, with Grafana's variables filled in."""
    found = []
    for panel in graphs():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_INTERVALS.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(bot_\w+|up)\b", expr))


def test_the_dashboard_is_well_formed_for_grafana() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variable = board["templating"]["list"][0]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in graphs():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])


async def test_a_real_prometheus_finds_every_dashboard_query_and_alert_series(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    metrics = Metrics()
    service = await make_service(metrics=metrics)
    dispatcher = Dispatcher(service, metrics)
    channel = QueueChannel(dispatcher)
    channel._connected = True
    guard = service.cache.guard
    health = HealthServer(
        service.store.engine, service.cache.redis, metrics, [channel], lambda: guard.state
    )
    port = await health.start("127.0.0.1", 0)
    try:
        async with prometheus_scraping([f"127.0.0.1:{port}"], tmp_path) as prometheus:
            await prometheus.scraped(times=2)
            await traffic(dispatcher)
            await prometheus.scraped(times=3)  # two samples of each rate after the traffic
            await every_query_returns_data(prometheus)
            await every_alert_rule_evaluates_on_exported_series(prometheus)
    finally:
        await health.stop()


async def traffic(dispatcher: Dispatcher) -> None:
    """Messages of two users, a command, a redelivered event, as an adapter hands them
    over and reports them delivered; and what an adapter tells of the platform: a 429
    waited out, an event it failed to handle."""
    for user in (new_user(), new_user()):
        for n, text in enumerate(("hello", "and again", "/help", "hello")):
            message = msg(user, text, pid=f"{user}:{n % 3}", channel="queue")  # 3: a redelivery
            reply = await dispatcher.handle(message)
            if reply.text is not None:
                dispatcher.sent("queue")
                dispatcher.delivered(message, reply)
    dispatcher.platform_rate_limited("queue")
    dispatcher.failed("queue")


async def every_query_returns_data(prometheus: Prometheus) -> None:
    empty = []
    for title, expr in queries():
        result = await prometheus.query(expr)
        numbers = [float(sample["value"][1]) for sample in result]
        if not numbers or all(number != number for number in numbers):  # none, or all NaN
            empty.append(f"{title}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


async def every_alert_rule_evaluates_on_exported_series(prometheus: Prometheus) -> None:
    data = await prometheus.api("rules")
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    names = set(re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.M))
    assert {rule["name"] for rule in rules} == names
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
        assert rule["state"] == "inactive", rule  # a healthy worker: nothing fires
    exported = set(await prometheus.api("label/__name__/values"))
    wanted = set().union(*(metric_names(rule["query"]) for rule in rules))
    wanted |= set().union(*(metric_names(expr) for _, expr in queries()))
    assert wanted - exported == set()
