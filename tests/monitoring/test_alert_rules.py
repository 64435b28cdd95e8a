"""The alert rules (deploy/prometheus/alerts.yml) are valid, and each passes its unit
tests (alerts_test.yml) under promtool, the binary of Debian's `prometheus` package."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.support import ROOT, required_binary

RULES = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = required_binary(shutil.which("promtool"), "prometheus")
    return subprocess.run(
        [binary, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", (RULES / "alerts.yml").read_text(), re.M)


def test_the_alert_rules_and_the_prometheus_config_are_valid() -> None:
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in rules.stdout
    config = promtool("check", "config", "prometheus.yml")  # the compose profile's
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_rule_passes_its_unit_tests() -> None:
    tested = set(re.findall(r"alertname: (\w+)$", (RULES / "alerts_test.yml").read_text(), re.M))
    assert set(alert_names()) == tested  # each rule has its test, each test its rule
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
