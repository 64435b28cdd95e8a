"""A local OpenAI-compatible chat-completions server the tests start (aiohttp), with the
moderations endpoint beside it (flags a text holding FLAG_WORD; can fail or hang).

It records every request body, answers from a script of steps (then a default; a
request holding a rule's text, by the rule's step), and counts the calls in flight.
A request with `"stream": true` is answered with
server-sent events as OpenAI sends them: the reply word by word, after a first-token
delay and at a set rate, a usage chunk when `stream_options.include_usage` asks, then
`[DONE]`; a step can break the stream off, stall it, or refuse stream_options.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
FLAG_WORD = "forbidden"  # /v1/moderations flags a text holding it (any case)


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
    # Streaming (a request with "stream": true):
    first_token_delay: float = 0.0  # before the first piece
    piece_delay: float = 0.0  # between pieces
    break_after: int | None = None  # drop the connection after this many pieces
    stall_after: int | None = None  # no piece after this many (until the client leaves)
    ping_every: float | None = None  # while stalled, an SSE comment this often: no read
    # timeout of the client's HTTP stack fires, only a wait for the next piece can
    no_finish: bool = False  # end the stream cleanly without a finish_reason (cut short)
    reject_stream_options: bool = False  # answer 400 when stream_options is sent


def error(status: int, message: str = "scripted failure", **headers: str) -> Step:
    body = {"error": {"message": message, "type": "test", "code": status}}
    return Step(status=status, body=body, headers=headers)


class LLMServer:
    def __init__(self) -> None:
        self.default = Step()
        self.script: deque[Step] = deque()
        # (text, step): a request any of whose messages holds the text is answered by the
        # step, every time, before the script (e.g. summary requests made slow).
        self.rules: list[tuple[str, Step]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.in_flight = 0
        self.max_in_flight = 0
        self.pieces_sent: list[tuple[float, str]] = []  # (time.monotonic(), piece) streamed
        # Each streamed reply: (the last message's text, when its request arrived, when
        # its first piece went out), time.monotonic(): the LLM's own time to first token.
        self.first_pieces: list[tuple[str, float, float]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        # /v1/moderations: the bodies received; an error status to answer with instead
        # (None: answer), and how long to wait before answering (a hanging endpoint).
        self.moderations: list[dict[str, Any]] = []
        self.moderation_status: int | None = None
        self.moderation_delay = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def then(self, *steps: Step) -> None:
        self.script.extend(steps)

    def when(self, text: str, step: Step) -> None:
        """Answer every request whose messages hold `text` with `step`."""
        self.rules.append((text, step))

    def _step_for(self, body: dict[str, Any]) -> Step:
        said = [str(m.get("content", "")) for m in body.get("messages", ())]
        for text, step in self.rules:
            if any(text in content for content in said):
                return step
        return self.script.popleft() if self.script else self.default

    async def start(self, port: int = 0) -> None:
        """Listen on `port` (0: a free one of the system's choosing). After stop(), start
        again on `self.port`: an LLM that was down (refusing connections) is back."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/v1/moderations", self._moderations)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its own, in TIME-WAIT
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.arrivals.append(arrived)
        step = self._step_for(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(step.delay)
        finally:
            self.in_flight -= 1
        if step.body is not None:
            return web.json_response(step.body, status=step.status, headers=step.headers)
        if body.get("stream"):
            return await self._stream(request, body, step, arrived)
        return web.json_response(_completion(body, step), status=step.status, headers=step.headers)

    async def _moderations(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.moderations.append(body)
        await asyncio.sleep(self.moderation_delay)
        if self.moderation_status is not None:
            failure = {"error": {"message": "scripted failure", "code": self.moderation_status}}
            return web.json_response(failure, status=self.moderation_status)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        results = []
        for text in texts:
            flagged = FLAG_WORD in str(text).lower()
            score = 0.99 if flagged else 0.01
            categories = {"harassment": flagged}
            results.append(
                {
                    "flagged": flagged,
                    "categories": categories,
                    "category_scores": {"harassment": score},
                }
            )
        model = body.get("model") or "omni-moderation-latest"
        return web.json_response({"id": "modr-local", "model": model, "results": results})

    async def _stream(
        self, request: web.Request, body: dict[str, Any], step: Step, arrived: float
    ) -> web.StreamResponse:
        if step.reject_stream_options and "stream_options" in body:
            refusal = {"error": {"message": "stream_options is not supported", "code": 400}}
            return web.json_response(refusal, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        model = step.model or f"{body['model']}-served"
        await asyncio.sleep(step.first_token_delay)
        await _event(response, _chunk(model, {"role": "assistant", "content": ""}))
        for number, piece in enumerate(_pieces(_reply_text(body, step))):
            if number == step.break_after:
                assert request.transport is not None
                request.transport.abort()  # mid-body: the client sees the stream cut
                return response
            if number == step.stall_after:
                while True:  # until the client gives up
                    await asyncio.sleep(step.ping_every or 3600)
                    await response.write(b": ping\n\n")
            if number:
                await asyncio.sleep(step.piece_delay)
            await _event(response, _chunk(model, {"content": piece}))
            self.pieces_sent.append((sent := time.monotonic(), piece))
            if not number:
                last = str(body["messages"][-1]["content"])
                self.first_pieces.append((last, arrived, sent))
        if not step.no_finish:
            await _event(response, _chunk(model, {}, finish="stop"))
        if (body.get("stream_options") or {}).get("include_usage") and step.usage is not None:
            await _event(response, {**_chunk(model, {}), "choices": [], "usage": step.usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _reply_text(body: dict[str, Any], step: Step) -> str:
    return step.text or f"LLM reply to: {body['messages'][-1]['content']}"


def _pieces(text: str) -> list[str]:
    """The reply word by word, each word with the spaces after it."""
    return re.findall(r"\S+\s*", text) or [text]


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stream",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(data)}\n\n".encode())


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
                "message": {"role": "assistant", "content": _reply_text(body, step)},
                "finish_reason": "stop",
            }
        ],
    }
    if step.usage is not None:
        answer["usage"] = step.usage
    return answer
