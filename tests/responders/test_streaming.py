"""Responders that stream, against the local OpenAI-compatible server through the real
openai client: pieces in order, usage and model from the stream, retries only before
the first piece, and a stream that breaks off is an interruption with its part."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot.domain import ContextMessage
from bot.emulators.llm_api import DEFAULT_USAGE, LLMServer, Step, error
from bot.errors import ResponderError, ResponderInterrupted, ResponderTimeout
from bot.responders.base import ResponderRequest, estimate_tokens
from bot.responders.echo import EchoResponder
from bot.responders.openai_compat import LLMOptions, OpenAICompatResponder

TEXT = "One two three four five six."
WORDS = ["One ", "two ", "three ", "four ", "five ", "six."]


def options(llm: LLMServer, timeout: float = 2.0, deadline: float = 5.0) -> LLMOptions:
    return LLMOptions(
        base_url=llm.url,
        api_key=None,
        timeout=timeout,
        deadline=deadline,
        connect_attempts=3,
        max_concurrency=4,
        max_tokens=64,
        temperature=None,
        context_token_budget=4000,
        system_prompt="",
    )


@pytest.fixture
async def responder(llm: LLMServer) -> AsyncIterator[OpenAICompatResponder]:
    made = OpenAICompatResponder(options(llm))
    yield made
    await made.aclose()


def request(text: str = "hello") -> ResponderRequest:
    earlier = [ContextMessage("user", "before", datetime.now(UTC))]
    return ResponderRequest(model="test-model", text=text, context=earlier, channel="console")


class Sink:
    def __init__(self, delay: float = 0.0) -> None:
        self.pieces: list[str] = []
        self.delay = delay

    async def __call__(self, piece: str) -> None:
        await asyncio.sleep(self.delay)
        self.pieces.append(piece)


async def test_pieces_come_in_order_and_the_result_is_them_joined(
    llm: LLMServer, responder: OpenAICompatResponder
) -> None:
    llm.then(Step(text=TEXT))
    sink = Sink()

    result = await responder.respond(request(), sink)

    assert sink.pieces == WORDS and result.text == TEXT
    assert result.model_used == "test-model-served"
    assert result.prompt_tokens == DEFAULT_USAGE["prompt_tokens"]
    assert result.completion_tokens == DEFAULT_USAGE["completion_tokens"]
    sent = llm.requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_without_a_usage_chunk_the_tokens_are_estimated(
    llm: LLMServer, responder: OpenAICompatResponder
) -> None:
    llm.then(Step(text=TEXT, usage=None))

    result = await responder.respond(request(), Sink())

    assert result.completion_tokens == estimate_tokens(TEXT)


async def test_a_sink_slower_than_the_timeout_is_not_the_apis_slowness(
    llm: LLMServer,
) -> None:
    # A platform that makes the adapter wait (a 429) holds the reading back; only
    # the waits for the API count against LLM_TIMEOUT_SECONDS.
    responder = OpenAICompatResponder(options(llm, timeout=0.3, deadline=10))
    llm.then(Step(text="slow sink here"))
    sink = Sink(delay=0.4)
    try:
        result = await responder.respond(request(), sink)
    finally:
        await responder.aclose()

    assert sink.pieces == ["slow ", "sink ", "here"] and result.text == "slow sink here"


async def test_a_failure_before_the_first_piece_is_retried_and_shows_the_text_once(
    llm: LLMServer, responder: OpenAICompatResponder
) -> None:
    llm.then(error(503), Step(text=TEXT))
    sink = Sink()

    result = await responder.respond(request(), sink)

    assert len(llm.requests) == 2
    assert sink.pieces == WORDS and result.text == TEXT


async def test_a_stream_broken_off_is_an_interruption_with_its_part_and_no_retry(
    llm: LLMServer, responder: OpenAICompatResponder
) -> None:
    llm.then(Step(text=TEXT, break_after=3), Step(text="never asked for"))
    sink = Sink()

    with pytest.raises(ResponderInterrupted) as caught:
        await responder.respond(request(), sink)

    assert caught.value.partial == "One two three " == "".join(sink.pieces)
    assert len(llm.requests) == 1


async def test_a_stream_that_stalls_is_an_interruption_after_the_timeout(
    llm: LLMServer,
) -> None:
    responder = OpenAICompatResponder(options(llm, timeout=0.5, deadline=10))
    llm.then(Step(text=TEXT, stall_after=2, ping_every=0.1))
    sink = Sink()
    try:
        with pytest.raises(ResponderInterrupted) as caught:
            await asyncio.wait_for(responder.respond(request(), sink), 8)
    finally:
        await responder.aclose()

    assert caught.value.partial == "One two "
    assert len(llm.requests) == 1


async def test_a_stream_ended_without_a_finish_is_an_interruption(
    llm: LLMServer, responder: OpenAICompatResponder
) -> None:
    llm.then(Step(text=TEXT, no_finish=True))

    with pytest.raises(ResponderInterrupted) as caught:
        await responder.respond(request(), Sink())

    assert caught.value.partial == TEXT


async def test_no_first_piece_within_the_timeout_is_retried_then_a_timeout(
    llm: LLMServer,
) -> None:
    responder = OpenAICompatResponder(options(llm, timeout=0.3, deadline=1.0))
    llm.default = Step(text=TEXT, first_token_delay=5)
    sink = Sink()
    try:
        with pytest.raises(ResponderTimeout):
            await asyncio.wait_for(responder.respond(request(), sink), 8)
    finally:
        await responder.aclose()

    assert sink.pieces == [] and len(llm.requests) >= 2


async def test_a_server_refusing_stream_options_is_asked_again_without(
    llm: LLMServer, responder: OpenAICompatResponder
) -> None:
    llm.default = Step(text=TEXT, reject_stream_options=True)
    sink = Sink()

    first = await responder.respond(request(), sink)
    second = await responder.respond(request(), Sink())

    assert sink.pieces == WORDS and first.text == second.text == TEXT
    assert first.completion_tokens == estimate_tokens(TEXT)  # no usage without the option
    assert [("stream_options" in r) for r in llm.requests] == [True, False, False]


async def test_an_empty_stream_is_no_reply(
    llm: LLMServer, responder: OpenAICompatResponder
) -> None:
    llm.then(Step(text=" "))

    with pytest.raises(ResponderError, match="without a reply text"):
        await responder.respond(request(), Sink())


async def test_the_echo_streams_word_by_word_what_it_says_whole() -> None:
    echo = EchoResponder(word_delay=0.001)
    sink = Sink()

    streamed = await echo.respond(request("hi there"), sink)
    whole = await echo.respond(request("hi there"))

    assert "".join(sink.pieces) == streamed.text == whole.text
    assert len(sink.pieces) == len(whole.text.split()) and sink.pieces[0] == "You "
