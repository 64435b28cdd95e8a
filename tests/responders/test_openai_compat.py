"""The OpenAI-compatible responder against a local server, through the real service."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.domain import ContextMessage, ReplyKind
from bot.emulators.llm_api import LLMServer, Step, error
from bot.metrics import Metrics
from bot.responders.base import estimate_tokens
from bot.responders.openai_compat import fit_context, retry_after_seconds
from bot.service import RESPONDER_FAILED_TEXT, ConversationService
from tests.channels.test_console import chat, chat_env
from tests.support import ROOT, ServiceFactory, messages_of, msg, new_user

API_KEY = "sk-test-secret-4f1e2d"
LLMService = Callable[..., Awaitable[ConversationService]]


@pytest.fixture
async def llm_service(
    make_service: ServiceFactory, llm: LLMServer, redis: Redis
) -> AsyncIterator[LLMService]:
    """A service whose responder (built from the settings) talks to the local server."""
    built: list[ConversationService] = []

    async def make(**overrides: Any) -> ConversationService:
        values: dict[str, Any] = {
            "llm_base_url": llm.url,
            "llm_api_key": API_KEY,
            "default_model": "test-model",
            "system_prompt": "You are a test bot.",
            "llm_max_tokens": 256,
            "llm_temperature": 0.3,
            "llm_timeout_seconds": 2.0,
            "llm_retry_deadline_seconds": 5.0,
        }
        service = await make_service(**(values | overrides))
        assert service.responder.name == "openai"
        built.append(service)
        return service

    yield make
    for service in built:
        await service.responder.aclose()


def system(content: str = "You are a test bot.") -> dict[str, str]:
    return {"role": "system", "content": content}


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


async def test_request_body_usage_and_model_used(
    llm_service: LLMService, llm: LLMServer, engine: AsyncEngine
) -> None:
    service = await llm_service()
    llm.then(
        Step(
            text="Hi!", model="test-model-2024", usage={"prompt_tokens": 9, "completion_tokens": 3}
        )
    )
    who = new_user()
    first = await service.handle(msg(who, "hello"))
    second = await service.handle(msg(who, "and again"))

    assert first.kind is ReplyKind.ANSWER and first.text == "Hi!"
    assert second.text == "LLM reply to: and again"
    assert llm.requests[1] == {
        "model": "test-model",
        "messages": [system(), user("hello"), assistant("Hi!"), user("and again")],
        "max_tokens": 256,
        "temperature": 0.3,
    }
    assert llm.headers[0]["Authorization"] == f"Bearer {API_KEY}"
    rows = [
        (r.role, r.content, r.model_used, r.token_count) for r in await messages_of(engine, who)
    ]
    assert rows == [
        ("user", "hello", None, 9),
        ("assistant", "Hi!", "test-model-2024", 3),
        ("user", "and again", None, 11),
        ("assistant", "LLM reply to: and again", "test-model-served", 7),
    ]


async def test_channel_settings_override_prompt_temperature_and_max_tokens(
    llm_service: LLMService, llm: LLMServer, engine: AsyncEngine
) -> None:
    channel = f"llm{new_user()}"
    overrides = {"system_prompt": "Talk like a pirate.", "temperature": 1, "max_tokens": 42}
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO channel_configs (channel_type, settings) VALUES (:c, :s)"),
            {"c": channel, "s": json.dumps(overrides)},
        )
    service = await llm_service(llm_temperature=None)
    await service.handle(msg(new_user(), "ahoy", channel=channel))
    await service.handle(msg(new_user(), "plain"))

    assert llm.requests[0] == {
        "model": "test-model",
        "messages": [system("Talk like a pirate."), user("ahoy")],
        "max_tokens": 42,
        "temperature": 1.0,
    }
    # Without channel settings and LLM_TEMPERATURE unset, the API's default applies.
    assert llm.requests[1] == {
        "model": "test-model",
        "messages": [system(), user("plain")],
        "max_tokens": 256,
    }


async def test_missing_usage_is_estimated(
    llm_service: LLMService, llm: LLMServer, engine: AsyncEngine
) -> None:
    service = await llm_service(system_prompt="")
    llm.then(Step(text="twelve chars", usage=None))
    who = new_user()
    await service.handle(msg(who, "sixteen chars ok"))

    assert llm.requests[0]["messages"] == [user("sixteen chars ok")]  # empty prompt: none sent
    assert [r.token_count for r in await messages_of(engine, who)] == [4, 3]


async def test_429_waits_for_retry_after_then_answers(
    llm_service: LLMService, llm: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    service = await llm_service()
    llm.then(error(429, "slow down", **{"Retry-After": "1"}))
    reply = await service.handle(msg(new_user(), "hi"))

    assert reply.kind is ReplyKind.ANSWER and reply.text == "LLM reply to: hi"
    assert len(llm.requests) == 2
    assert llm.arrivals[1] - llm.arrivals[0] >= 0.95
    assert "429" in caplog.text and API_KEY not in caplog.text


async def test_500_is_retried(llm_service: LLMService, llm: LLMServer) -> None:
    service = await llm_service()
    llm.then(error(500), error(503))
    reply = await service.handle(msg(new_user(), "hi"))

    assert reply.kind is ReplyKind.ANSWER and len(llm.requests) == 3


async def assert_apologized(
    service: ConversationService, engine: AsyncEngine, who: str, metrics: Metrics | None = None
) -> None:
    """The user got the apology, the message is stored, no reply row is."""
    rows = await messages_of(engine, who)
    assert [(r.role, r.content) for r in rows] == [("user", "hi")]
    assert service.stats["responder_error"] == 1
    if metrics is not None:
        assert "bot_responder_errors_total 1.0" in metrics.render().decode()


async def test_a_hanging_api_times_out_into_an_apology(
    llm_service: LLMService, llm: LLMServer, engine: AsyncEngine
) -> None:
    metrics = Metrics()
    service = await llm_service(
        llm_timeout_seconds=0.3, llm_retry_deadline_seconds=1.0, metrics=metrics
    )
    llm.default = Step(delay=2.0)
    who = new_user()
    started = time.monotonic()
    reply = await service.handle(msg(who, "hi"))

    assert time.monotonic() - started < 1.5
    assert reply.kind is ReplyKind.FAILED and reply.text == RESPONDER_FAILED_TEXT
    assert len(llm.requests) >= 2  # tried again within the deadline
    await assert_apologized(service, engine, who, metrics)


async def test_a_400_is_not_retried(
    llm_service: LLMService, llm: LLMServer, engine: AsyncEngine
) -> None:
    service = await llm_service()
    llm.then(error(400, "model not found"))
    who = new_user()
    reply = await service.handle(msg(who, "hi"))

    assert reply.text == RESPONDER_FAILED_TEXT
    assert len(llm.requests) == 1
    await assert_apologized(service, engine, who)


async def test_a_retry_after_past_the_deadline_gives_up_at_once(
    llm_service: LLMService, llm: LLMServer, engine: AsyncEngine
) -> None:
    service = await llm_service(llm_retry_deadline_seconds=2.0)
    llm.then(error(429, **{"Retry-After": "30"}))
    who = new_user()
    started = time.monotonic()
    reply = await service.handle(msg(who, "hi"))

    assert reply.text == RESPONDER_FAILED_TEXT and len(llm.requests) == 1
    assert time.monotonic() - started < 1.0
    await assert_apologized(service, engine, who)


async def test_a_malformed_answer_is_an_apology(
    llm_service: LLMService, llm: LLMServer, engine: AsyncEngine
) -> None:
    service = await llm_service()
    llm.then(Step(body={"choices": []}))
    who = new_user()
    reply = await service.handle(msg(who, "hi"))

    assert reply.text == RESPONDER_FAILED_TEXT and len(llm.requests) == 1
    await assert_apologized(service, engine, who)


async def test_context_is_trimmed_to_the_token_budget_newest_kept(
    llm_service: LLMService, llm: LLMServer
) -> None:
    prompt, line = "S" * 20, "x" * 40  # 5 and 10 estimated tokens
    service = await llm_service(system_prompt=prompt, llm_context_token_budget=5 + 10 + 25)
    llm.default = Step(text="r" * 40)
    who = new_user()
    for n in range(3):
        await service.handle(msg(who, f"{n}{line[1:]}"))

    # Room for two context messages of 10 tokens after the prompt and the new message.
    assert llm.requests[2]["messages"] == [
        system(prompt),
        user(f"1{line[1:]}"),
        assistant("r" * 40),
        user(f"2{line[1:]}"),
    ]


async def test_calls_in_flight_are_bounded(llm_service: LLMService, llm: LLMServer) -> None:
    service = await llm_service(llm_max_concurrency=2)
    llm.default = Step(delay=0.3)
    replies = await asyncio.gather(*(service.handle(msg(new_user(), f"m{n}")) for n in range(6)))

    assert [r.text for r in replies] == [f"LLM reply to: m{n}" for n in range(6)]
    assert llm.max_in_flight == 2


async def test_model_command_accepts_only_allowed_models(
    llm_service: LLMService, llm: LLMServer
) -> None:
    service = await llm_service(allowed_models="test-model, big-model")
    who = new_user()
    refused = await service.handle(msg(who, "/model gpt-5"))
    shown = await service.handle(msg(who, "/model"))
    chosen = await service.handle(msg(who, "/model big-model"))
    await service.handle(msg(who, "hi"))

    assert refused.kind is ReplyKind.INVALID
    assert refused.text == (
        "The model gpt-5 isn't available here. Choose one of: test-model, big-model."
    )
    assert shown.text is not None and shown.text.endswith("Available: test-model, big-model.")
    assert chosen.text == "Okay, I'll answer with the model big-model from now on."
    assert [r["model"] for r in llm.requests] == ["big-model"]


async def test_bot_chat_answers_from_the_llm(
    llm: LLMServer, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    env = chat_env(settings, tmp_path) | {
        "LLM_BASE_URL": llm.url,
        "LLM_API_KEY": API_KEY,
        "DEFAULT_MODEL": "chat-model",
        "LOG_LEVEL": "DEBUG",
    }
    llm.then(Step(text="Hello from the local LLM."))
    done = await asyncio.to_thread(chat, "hello\n", new_user(), env, ROOT)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Hello from the local LLM."]
    assert llm.requests[0]["model"] == "chat-model"
    assert API_KEY not in done.stderr + done.stdout


def refused_port() -> socket.socket:
    """A port bound by this test and never listened on: connecting is refused, and no
    other program can take the port while the test holds it."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    return holder


@pytest.mark.parametrize("attempts", [None, "1"])
async def test_bot_chat_with_the_llm_server_down_apologizes_in_seconds_saying_why(
    settings: Settings, redis: Redis, tmp_path: Path, attempts: str | None
) -> None:
    """Issue 17, item 3: connection refused cost 18 tries and 105 s before the apology.
    Now LLM_CONNECT_ATTEMPTS tries (3 unless set), the deadline (90 s) left as it is,
    and the last line says what is wrong."""
    with refused_port() as holder:
        url = f"http://127.0.0.1:{holder.getsockname()[1]}/v1"
        env = chat_env(settings, tmp_path) | {"LLM_BASE_URL": url}
        env.pop("LLM_RETRY_DEADLINE_SECONDS", None)
        if attempts is not None:
            env["LLM_CONNECT_ATTEMPTS"] = attempts
        started = time.monotonic()
        done = await asyncio.to_thread(chat, "hi\n", new_user(), env, ROOT)
        took = time.monotonic() - started

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [RESPONDER_FAILED_TEXT]
    tries = int(attempts or 3)
    retried = re.findall(r"LLM call failed \(.*connection refused.*\); try (\d+) in", done.stderr)
    assert retried == [str(n) for n in range(2, tries + 1)]
    *_, last = done.stderr.strip().splitlines()
    assert last.endswith(
        f"responder openai failed: cannot connect to the LLM API at {url}: connection refused "
        "(is the server running? LLM_BASE_URL)"
    )
    assert took < 30, f"{took:.1f} s to the apology"  # the process included; 105 s before


async def test_an_unresolvable_host_is_tried_a_few_times_only(
    llm_service: LLMService, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    service = await llm_service(
        llm_base_url="http://no-such-host.invalid/v1", llm_retry_deadline_seconds=60.0
    )
    who = new_user()
    reply = await service.handle(msg(who, "hi"))

    assert reply.text == RESPONDER_FAILED_TEXT
    retries = [r for r in caplog.records if r.getMessage().startswith("LLM call failed")]
    assert len(retries) == 2, caplog.text
    assert "no-such-host.invalid/v1: its host name does not resolve" in retries[0].getMessage()
    await assert_apologized(service, engine, who)


async def test_5xx_keeps_the_deadline_beyond_the_connect_attempts(
    llm_service: LLMService, llm: LLMServer
) -> None:
    service = await llm_service(llm_retry_deadline_seconds=30.0, llm_connect_attempts=2)
    llm.then(*(error(503) for _ in range(4)))
    reply = await service.handle(msg(new_user(), "hi"))

    assert reply.kind is ReplyKind.ANSWER and len(llm.requests) == 5


def test_fit_context_keeps_the_newest() -> None:
    now = datetime.now(UTC)
    context = [ContextMessage("user", "a" * 4 * n, now) for n in (1, 2, 3)]  # 1, 2, 3 tokens
    assert fit_context(context, 5) == context[1:]
    assert fit_context(context, 6) == context
    assert fit_context(context, 2) == []
    assert estimate_tokens("a" * 12) == 3


def test_retry_after_in_seconds_milliseconds_or_a_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds({"retry-after": "2"}, now) == 2.0
    assert retry_after_seconds({"retry-after": "1.5"}, now) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 01 Jan 2025 12:00:07 GMT"}, now) == 7.0
    assert retry_after_seconds({"retry-after": "Wed, 01 Jan 2025 11:00:00 GMT"}, now) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}, now) is None
    assert retry_after_seconds({}, now) is None
