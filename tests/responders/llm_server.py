"""A local OpenAI-compatible chat-completions server the tests start (aiohttp).

It records every request body, answers from a script of steps (then a default), and
counts the calls in flight.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@dataclass(frozen=True)
class Step:
    """One scripted answer. `body` set: sent as is (an error); else a completion."""

    status: int = 200
    text: str | None = None  # None: "LLM reply to: <the last user message>"
    model: str | None = None  # None: "<requested model>-served"
    usage: dict[str, int] | None = field(default_factory=lambda: dict(DEFAULT_USAGE))
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: Any = None


def error(status: int, message: str = "scripted failure", **headers: str) -> Step:
    body = {"error": {"message": message, "type": "test", "code": status}}
    return Step(status=status, body=body, headers=headers)


class LLMServer:
    def __init__(self) -> None:
        self.default = Step()
        self.script: deque[Step] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def then(self, *steps: Step) -> None:
        self.script.extend(steps)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # a free port of the system's choosing
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.arrivals.append(time.monotonic())
        step = self.script.popleft() if self.script else self.default
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(step.delay)
        finally:
            self.in_flight -= 1
        if step.body is not None:
            return web.json_response(step.body, status=step.status, headers=step.headers)
        return web.json_response(_completion(body, step), status=step.status, headers=step.headers)


def _completion(body: dict[str, Any], step: Step) -> dict[str, Any]:
    last = body["messages"][-1]["content"]
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{len(last)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": step.model or f"{body['model']}-served",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": step.text or f"LLM reply to: {last}"},
                "finish_reason": "stop",
            }
        ],
    }
    if step.usage is not None:
        answer["usage"] = step.usage
    return answer
