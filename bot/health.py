"""The worker's HTTP endpoints: /healthz, /readyz and Prometheus /metrics.

`/readyz` is the worker's readiness for an orchestrator: its stores answer and every
channel is connected. `/readyz?channel=telegram` (or `slack`, several comma-separated)
is what a load balancer in front of several workers asks before it sends that channel's
webhooks to this one: the channel's listener is up and the worker is not shutting down.
The stores are shown there but do not decide: a Redis outage only degrades a worker and
a Postgres outage is the worker's to tell users of (DESIGN.md, invariants 4 and 5), and
every worker shares them, so taking every worker out of the pool would only stop the bot.
From SIGTERM on both answer 503, "shutting down", so that no new request is sent to a
worker that would refuse it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.base import ChannelAdapter
from bot.listening import start_site
from bot.metrics import Metrics

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0


class HealthServer:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: Redis,
        metrics: Metrics,
        channels: Sequence[ChannelAdapter],
        redis_state: Callable[[], str | None] = lambda: None,
        closing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.engine = engine
        self.redis = redis
        self.metrics = metrics
        self.channels = channels
        # Why the worker is off the cache (its breaker open), or None: a Redis that
        # answers PING can still be one the bot cannot use (bot/cache/guard.py).
        self.redis_state = redis_state
        # True once the worker shuts down (its dispatcher refuses new events).
        self.closing = closing
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str, port: int) -> int:
        """Serve on host:port; returns the port (useful with port 0)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await start_site(self._runner, host, port, "HTTP_PORT")
        bound: int = self._runner.addresses[0][1]
        log.info("health and metrics on http://%s:%d (/healthz /readyz /metrics)", host, bound)
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self.readiness()
        named = [n.strip() for n in request.query.get("channel", "").split(",") if n.strip()]
        if named:  # a load balancer's question: can this worker take these webhooks?
            channels = checks["channels"]
            for name in named:
                channels.setdefault(name, "not served")
            ready = all(channels[name] == "connected" for name in named)
        else:
            ready = all(_is_up(status) for status in _flatten(checks))
        if self.closing():
            status, ready = "shutting down", False
        else:
            status = "ready" if ready else "not ready"
        body = {"status": status, **checks}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._record_readiness()
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _record_readiness(self) -> None:
        """Check readiness as /readyz does, for the gauges of this scrape."""
        checks = await self.readiness()
        dependencies = {name: _is_up(checks[name]) for name in ("postgres", "redis")}
        channels = {name: _is_up(state) for name, state in checks["channels"].items()}
        self.metrics.record_readiness(dependencies, channels)

    async def readiness(self) -> dict[str, Any]:
        postgres, redis = await asyncio.gather(self._check_postgres(), self._check_redis())
        channels = {c.name: "connected" if c.connected else "disconnected" for c in self.channels}
        return {"postgres": postgres, "redis": redis, "channels": channels}

    async def _check_postgres(self) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return f"down: {exc.__class__.__name__}"
        return "ok"

    async def _check_redis(self) -> str:
        if (state := self.redis_state()) is not None:
            return f"degraded: {state}"
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            return f"down: {exc.__class__.__name__}"
        return "ok"


def _is_up(status: str) -> bool:
    return status in ("ok", "connected")


def _flatten(checks: dict[str, Any]) -> list[str]:
    values: list[str] = []
    for value in checks.values():
        values.extend(value.values() if isinstance(value, dict) else [value])
    return values
