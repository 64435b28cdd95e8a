"""A real Prometheus (Debian's `prometheus` package) for tests: it scrapes the given
targets every second and evaluates the alert rules of deploy/prometheus."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import ROOT, free_port, required_binary

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
JOB = "bot"  # as in deploy/prometheus/prometheus.yml: the alert BotDown reads up{job="bot"}


class Prometheus:
    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.http = http

    async def api(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.base}/api/v1/{path}", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar) `expr` gives now."""
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def scrapes(self) -> int:
        """How many scrapes of the job it has stored."""
        found = await self.query(f'count_over_time(up{{job="{JOB}"}}[1h])')
        return int(found[0]["value"][1]) if found else 0

    async def scraped(self, times: int, within: float = 30.0) -> None:
        """Wait until it has scraped the target `times` more times."""
        goal = await self.scrapes() + times
        async with asyncio.timeout(within):
            while await self.scrapes() < goal:  # noqa: ASYNC110 - another process scrapes
                await asyncio.sleep(0.2)


def _config(targets: list[str]) -> str:
    quoted = ", ".join(f'"{target}"' for target in targets)
    return f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {ALERTS}
scrape_configs:
  - job_name: {JOB}
    static_configs:
      - targets: [{quoted}]
"""


@asynccontextmanager
async def prometheus_scraping(targets: list[str], workdir: Path) -> AsyncIterator[Prometheus]:
    binary = required_binary(shutil.which("prometheus"), "prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(_config(targets))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 - a server for the test's lifetime
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession() as http:
            await _ready(http, f"http://127.0.0.1:{port}", process, workdir)
            yield Prometheus(f"http://127.0.0.1:{port}", http)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


async def _ready(
    http: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes], workdir: Path
) -> None:
    async with asyncio.timeout(30):
        while True:
            if process.poll() is not None:
                raise AssertionError((workdir / "prometheus.log").read_text())
            try:
                async with http.get(f"{base}/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
