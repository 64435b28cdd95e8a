"""A responder decorator that records each reply's latency in the metrics."""

from __future__ import annotations

import time

from prometheus_client import Histogram

from bot.domain import TextSink
from bot.responders.base import Responder, ResponderRequest, ResponderResult, SummaryRequest


class TimedResponder:
    def __init__(self, inner: Responder, latency: Histogram) -> None:
        self.inner = inner
        self.name = inner.name
        self._latency = latency.labels(inner.name)

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        started = time.perf_counter()
        try:
            return await self.inner.respond(request, on_text)
        finally:
            self._latency.observe(time.perf_counter() - started)

    async def summarise(self, request: SummaryRequest) -> ResponderResult:
        return await self.inner.summarise(request)  # not a reply: not in its latency

    async def aclose(self) -> None:
        await self.inner.aclose()
