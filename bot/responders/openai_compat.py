"""The responder for any OpenAI-compatible chat-completions API: OpenAI, Azure OpenAI,
OpenRouter, vLLM, Ollama, llama.cpp server, LM Studio.

One call per attempt through the `openai` client (its own retries off), at most
`max_concurrency` calls in flight per worker, and one retry policy (`llm_retry`):
timeouts, 429 (after its Retry-After), 5xx and broken connections are tried again
within a total deadline; a connection refused or a host name that does not resolve
only `connect_attempts` times (a server that is not running, or a wrong URL); any
other 4xx not at all. What finally fails is raised as a ResponderError, which the
conversation service turns into an apology.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeGuard

import openai
from openai import AsyncOpenAI, AsyncStream, Omit, omit
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionStreamOptionsParam,
)
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from bot.domain import ContextMessage, TextSink
from bot.errors import (
    ResponderError,
    ResponderInterrupted,
    ResponderRejected,
    ResponderTimeout,
    ResponderUnavailable,
    ResponderUnreachable,
)
from bot.responders.base import (
    ResponderRequest,
    ResponderResult,
    SummaryRequest,
    estimate_tokens,
    transcript,
)
from bot.urls import redact_url

log = logging.getLogger(__name__)

# Sent when no key is configured: local servers (Ollama, vLLM) ignore it, and the
# client would otherwise fall back to OPENAI_API_KEY, a secret the logs don't know.
NO_API_KEY = "no-key"


@dataclass(frozen=True, slots=True)
class LLMOptions:
    base_url: str
    api_key: SecretStr | None
    timeout: float  # one call
    deadline: float  # all attempts of one reply, waits included
    connect_attempts: int  # tries of one reply while the connection is refused
    max_concurrency: int
    max_tokens: int
    temperature: float | None
    context_token_budget: int  # the prompt: system prompt + context + new message
    system_prompt: str


# --- the request ----------------------------------------------------------------------

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")  # what the chat-completions `name` may hold
SUMMARY_LEAD = "Summary of the conversation before the messages that follow: "


def build_messages(
    request: ResponderRequest, options: LLMOptions
) -> list[ChatCompletionMessageParam]:
    """System prompt, the context that fits the token budget (oldest first), the message."""
    system = _channel_str(request.channel_settings, "system_prompt", options.system_prompt)
    head: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}]
    head = head if system else []
    room = options.context_token_budget - estimate_tokens(request.text)
    room -= estimate_tokens(system) if system else 0
    # A summary of what came before (always the oldest, bot/summaries.py) is always sent:
    # the messages after it fill what room it leaves.
    summary = [m for m in request.context[:1] if m.is_summary]
    room -= sum(estimate_tokens(m.content) for m in summary)
    context = [*summary, *fit_context(request.context[len(summary) :], room)]
    latest = ContextMessage("user", request.text, datetime.now(UTC), request.author)
    return [*head, *map(_param, context), _param(latest)]


def summary_messages(request: SummaryRequest) -> list[ChatCompletionMessageParam]:
    """The summarising instructions, and what is to be summarised as one user message."""
    return [
        {"role": "system", "content": request.instructions},
        {"role": "user", "content": transcript(request)},
    ]


def fit_context(context: Sequence[ContextMessage], budget: int) -> list[ContextMessage]:
    """The newest messages (oldest first) whose estimated tokens fit in the budget."""
    kept: list[ContextMessage] = []
    for message in reversed(context):
        budget -= estimate_tokens(message.content)
        if budget < 0:
            break
        kept.append(message)
    return kept[::-1]


def _param(message: ContextMessage) -> ChatCompletionMessageParam:
    if message.is_summary:
        return {"role": "system", "content": f"{SUMMARY_LEAD}{message.content}"}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.author is None:
        return {"role": "user", "content": message.content}
    # A shared conversation: who said it, in the API's `name` field where the API reads
    # it, and in the text for every model (many OpenAI-compatible servers ignore `name`).
    name = _NAME_UNSAFE.sub("_", message.author)[:64] or "user"
    return {"role": "user", "name": name, "content": f"{message.author}: {message.content}"}


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    temperature: float | None  # None: the API's default


def sampling(request: ResponderRequest, options: LLMOptions) -> Sampling:
    """max_tokens and temperature: the channel's settings, else the configured ones."""
    max_tokens = request.channel_settings.get("max_tokens")
    if not (_is_number(max_tokens) and isinstance(max_tokens, int) and max_tokens > 0):
        max_tokens = options.max_tokens
    temperature = request.channel_settings.get("temperature")
    if not (_is_number(temperature) and 0 <= temperature <= 2):
        temperature = options.temperature
    return Sampling(max_tokens, None if temperature is None else float(temperature))


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _channel_str(settings: Mapping[str, Any], key: str, default: str) -> str:
    value = settings.get(key)
    return value if isinstance(value, str) else default


# --- failures and the retry policy ----------------------------------------------------


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The wait an answer asks for: `retry-after-ms`, or `Retry-After` in seconds or a date."""
    millis = headers.get("retry-after-ms")
    value = headers.get("retry-after")
    try:
        if millis:
            return max(0.0, float(millis) / 1000)
        if value:
            return max(0.0, float(value))
    except ValueError:
        pass
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def map_error(exc: openai.OpenAIError, base_url: str) -> ResponderError:
    """The client's exception as ours; the message never holds the API key."""
    if isinstance(exc, openai.APITimeoutError):
        return ResponderTimeout("the LLM API did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return _connection_error(exc, base_url)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = _error_detail(exc.body)
        if status in (408, 429) or status >= 500:
            wait = retry_after_seconds(exc.response.headers)
            return ResponderUnavailable(
                f"the LLM API answered {status}{detail}", status=status, retry_after=wait
            )
        return ResponderRejected(
            f"the LLM API refused the request: {status}{detail}", status=status
        )
    return ResponderError(f"the LLM API call failed ({exc.__class__.__name__})")


def _connection_error(exc: openai.APIConnectionError, base_url: str) -> ResponderError:
    """Refused or unresolvable: one line saying what to check. Anything else (a reset,
    a TLS failure, a connection cut mid-answer) may pass: retried to the deadline."""
    where = redact_url(base_url)
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return ResponderUnreachable(
                f"cannot connect to the LLM API at {where}: connection refused "
                "(is the server running? LLM_BASE_URL)"
            )
        if isinstance(cause, socket.gaierror):
            return ResponderUnreachable(
                f"cannot connect to the LLM API at {where}: its host name does not resolve "
                "(check LLM_BASE_URL)"
            )
    last = _causes(exc)[-1]
    return ResponderUnavailable(f"cannot reach the LLM API at {where} ({last.__class__.__name__})")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised from, outermost first. httpx wraps the
    socket's error two or three times, and anyio puts it in the context of its own."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _error_detail(body: object) -> str:
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else error
    return f" ({message[:200]})" if isinstance(message, str) and message else ""


_backoff = wait_exponential_jitter(multiplier=0.25, max=8, jitter=0.25)


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, ResponderUnavailable) and error.retry_after is not None:
        return error.retry_after
    return float(_backoff(state))


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("LLM call failed (%s); try %d in %.2f s", error, state.attempt_number + 1, wait)


class _UnreachableTries(stop_base):
    """A stop condition: `attempts` tries of one reply failed as ResponderUnreachable
    (counted whatever failed in between, so a server flapping between 503 and refused
    still ends in seconds once it stays away)."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        self.failed = 0

    def __call__(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ResponderUnreachable):
            self.failed += 1
        return self.failed >= self.attempts


def llm_retry(deadline: float, connect_attempts: int) -> AsyncRetrying:
    """The one retry policy for LLM calls: timeouts, 429, 5xx and broken connections
    within a total deadline; a refused or unresolvable connection `connect_attempts`
    times at most, so a server that is not there costs seconds, not the deadline.

    A wait that would end past the deadline (a long Retry-After) is not started: the
    last error is raised instead. Build one per reply: it counts the refusals.
    """
    return AsyncRetrying(
        retry=retry_if_exception_type((ResponderTimeout, ResponderUnavailable)),
        wait=_wait,
        stop=stop_before_delay(deadline) | _UnreachableTries(connect_attempts),
        before_sleep=_log_retry,
        reraise=True,
    )


# --- the responder --------------------------------------------------------------------


def api_client(base_url: str, api_key: SecretStr | None, timeout: float) -> AsyncOpenAI:
    """The `openai` client of an API, its own retries off (ours are llm_retry)."""
    key = api_key.get_secret_value() if api_key else ""
    return AsyncOpenAI(base_url=base_url, api_key=key or NO_API_KEY, timeout=timeout, max_retries=0)


class OpenAICompatResponder:
    name = "openai"

    def __init__(self, options: LLMOptions, client: AsyncOpenAI | None = None) -> None:
        self.options = options
        self._client = client or api_client(options.base_url, options.api_key, options.timeout)
        self._slots = asyncio.Semaphore(options.max_concurrency)
        self._usage_in_streams = True  # until the server refuses stream_options

    def stream_options(self) -> ChatCompletionStreamOptionsParam | Omit:
        """Ask for the usage at the end of a stream, unless this server refused to."""
        return {"include_usage": True} if self._usage_in_streams else omit

    def refuses_stream_options(self) -> None:
        if self._usage_in_streams:
            log.warning("the LLM API refuses stream_options: usage of streams is estimated")
        self._usage_in_streams = False

    async def respond(
        self, request: ResponderRequest, on_text: TextSink | None = None
    ) -> ResponderResult:
        messages = build_messages(request, self.options)
        params = sampling(request, self.options)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.deadline
        if on_text is not None:
            call = _StreamCall(self, request.model, messages, params, deadline, on_text)
            return await call.run()
        return await self._complete(request.model, messages, params, deadline)

    async def summarise(self, request: SummaryRequest) -> ResponderResult:
        """The summary, asked of the model in one call (its tries as for a reply)."""
        messages = summary_messages(request)
        params = Sampling(request.max_tokens, self.options.temperature)
        deadline = asyncio.get_running_loop().time() + self.options.deadline
        return await self._complete(request.model, messages, params, deadline)

    async def _complete(
        self,
        model: str,
        messages: list[ChatCompletionMessageParam],
        params: Sampling,
        deadline: float,
    ) -> ResponderResult:
        """One whole answer, tried as llm_retry says."""

        async def attempt() -> ChatCompletion:
            return await self._attempt(model, messages, params, deadline)

        retrying = llm_retry(self.options.deadline, self.options.connect_attempts)
        completion: ChatCompletion = await retrying(attempt)
        return parse_completion(completion, model, messages)

    async def _attempt(
        self,
        model: str,
        messages: list[ChatCompletionMessageParam],
        params: Sampling,
        deadline: float,
    ) -> ChatCompletion:
        """One call, in a free slot, within LLM_TIMEOUT_SECONDS and what is left of the deadline."""
        loop = asyncio.get_running_loop()
        async with self._slot(deadline):
            try:
                async with asyncio.timeout_at(min(loop.time() + self.options.timeout, deadline)):
                    return await self._client.chat.completions.create(
                        model=model,
                        messages=messages,
                        max_tokens=params.max_tokens,
                        temperature=omit if params.temperature is None else params.temperature,
                    )
            except TimeoutError:
                raise ResponderTimeout("the LLM API did not answer in time") from None
            except openai.OpenAIError as exc:
                raise map_error(exc, self.options.base_url) from exc

    @asynccontextmanager
    async def _slot(self, deadline: float) -> AsyncIterator[None]:
        """One of LLM_MAX_CONCURRENCY places for a call in flight, waited for until the deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            limit = self.options.max_concurrency
            raise ResponderTimeout(
                f"no free LLM slot in time (LLM_MAX_CONCURRENCY={limit})"
            ) from None
        try:
            yield
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        await self._client.close()

    @property
    def client(self) -> AsyncOpenAI:
        return self._client


class _StreamCall:
    """One streamed reply: `stream: true`, each piece given out as it comes.

    Until the first piece is given out, a failure is retried as for a whole reply
    (llm_retry); after it, a failure is ResponderInterrupted, never retried. Each wait
    for the API (the first chunk, and every next one) is bounded by LLM_TIMEOUT_SECONDS,
    and everything by the deadline; the time the sink takes is not the API's.
    """

    def __init__(
        self,
        responder: OpenAICompatResponder,
        model: str,
        messages: list[ChatCompletionMessageParam],
        params: Sampling,
        deadline: float,
        on_text: TextSink,
    ) -> None:
        self.responder = responder
        self.model = model
        self.messages = messages
        self.params = params
        self.deadline = deadline
        self.on_text = on_text
        self.pieces: list[str] = []
        self.served_model: str | None = None
        self.usage: Any = None
        self.finished = False

    async def run(self) -> ResponderResult:
        options = self.responder.options
        await llm_retry(options.deadline, options.connect_attempts)(self._attempt)
        text = "".join(self.pieces)
        if not self.finished:
            raise ResponderInterrupted("the LLM stream ended before the reply", partial=text)
        if not text.strip():
            raise ResponderError("the LLM API answered without a reply text")
        prompt = getattr(self.usage, "prompt_tokens", None)
        reply = getattr(self.usage, "completion_tokens", None)
        return ResponderResult(
            text=text,
            model_used=self.served_model or self.model,
            prompt_tokens=prompt if isinstance(prompt, int) else _estimate(self.messages),
            completion_tokens=reply if isinstance(reply, int) else estimate_tokens(text),
        )

    async def _attempt(self) -> None:
        responder = self.responder
        async with responder._slot(self.deadline):
            try:
                await self._read(await self._open())
            except TimeoutError:
                raise self._failed(ResponderTimeout("the LLM API did not answer in time")) from None
            except openai.OpenAIError as exc:
                raise self._failed(map_error(exc, responder.options.base_url)) from exc

    async def _open(self) -> AsyncStream[ChatCompletionChunk]:
        loop = asyncio.get_running_loop()
        timeout = min(loop.time() + self.responder.options.timeout, self.deadline)
        async with asyncio.timeout_at(timeout):
            return await self.responder.client.chat.completions.create(
                model=self.model,
                messages=self.messages,
                max_tokens=self.params.max_tokens,
                temperature=omit if self.params.temperature is None else self.params.temperature,
                stream=True,
                stream_options=self.responder.stream_options(),
            )

    async def _read(self, stream: AsyncStream[ChatCompletionChunk]) -> None:
        loop, timeout = asyncio.get_running_loop(), self.responder.options.timeout
        async with stream, asyncio.timeout_at(None) as limit:
            chunks = aiter(stream)
            while True:
                limit.reschedule(min(loop.time() + timeout, self.deadline))
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                limit.reschedule(None)  # the sink's time is not the API's
                await self._take(chunk)

    async def _take(self, chunk: ChatCompletionChunk) -> None:
        self.served_model = getattr(chunk, "model", None) or self.served_model
        self.usage = getattr(chunk, "usage", None) or self.usage
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            piece = getattr(delta, "content", None) or getattr(delta, "refusal", None)
            if isinstance(piece, str) and piece:
                self.pieces.append(piece)
                await self.on_text(piece)
            if getattr(choice, "finish_reason", None):
                self.finished = True

    def _failed(self, error: ResponderError) -> ResponderError:
        """The error to raise: retried as it is while nothing was given out, else an
        interruption; a server refusing stream_options is asked again without them."""
        partial = "".join(self.pieces)
        if partial:
            return ResponderInterrupted(f"the LLM stream broke off: {error}", partial=partial)
        if isinstance(error, ResponderRejected) and "stream_options" in str(error):
            self.responder.refuses_stream_options()
            return ResponderUnavailable(f"{error}; asking again without stream_options")
        return error


def parse_completion(
    completion: ChatCompletion, requested: str, messages: Sequence[ChatCompletionMessageParam]
) -> ResponderResult:
    """The reply, the model that gave it, and the reported usage (else an estimate)."""
    choices = getattr(completion, "choices", None)
    message = getattr(choices[0], "message", None) if choices else None
    text = getattr(message, "content", None) or getattr(message, "refusal", None)
    if not isinstance(text, str) or not text.strip():
        raise ResponderError("the LLM API answered without a reply text")
    usage = getattr(completion, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    reply = getattr(usage, "completion_tokens", None)
    model = getattr(completion, "model", None)
    return ResponderResult(
        text=text,
        model_used=model if isinstance(model, str) and model else requested,
        prompt_tokens=prompt if isinstance(prompt, int) else _estimate(messages),
        completion_tokens=reply if isinstance(reply, int) else estimate_tokens(text),
    )


def _estimate(messages: Sequence[ChatCompletionMessageParam]) -> int:
    return sum(estimate_tokens(str(m.get("content", ""))) for m in messages)
