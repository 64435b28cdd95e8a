"""`bot ops conversation show|search`: messages, the cached context, full-text search."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ChatKind, IncomingMessage
from tests.ops.conftest import Ops, channel_name, chat
from tests.support import ServiceFactory, msg, new_user

pytestmark = pytest.mark.timeout(15)


async def test_conversation_show_marks_the_messages_in_the_cached_context(
    ops: Ops, make_service: ServiceFactory
) -> None:
    channel, user = "console", new_user()
    service = await make_service(context_messages=2)  # only the newest exchange is cached
    for text in ("one", "two", "three [bold]not markup[/bold]"):
        await service.handle(msg(user, text, channel=channel))
    shown = (await ops("user", "show", channel, user, "--json")).data
    conversation = shown["conversations"][0]["id"]

    data = (await ops("conversation", "show", conversation, "--json")).data

    messages = data["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[0]["content"] == "one" and messages[-1]["model_used"] == "echo"
    assert [m["cached"] for m in messages] == [False] * 4 + [True] * 2
    assert all(m["token_count"] > 0 for m in messages)
    assert data["context"]["length"] == 2 and data["context"]["ttl_seconds"] > 0
    assert data["conversation"]["channel_user_id"] == user
    newest = (await ops("conversation", "show", conversation, "--limit", "3", "--json")).data
    assert [m["content"] for m in newest["messages"]] == [m["content"] for m in messages[3:]]
    table = await ops("conversation", "show", conversation)
    assert table.code == 0 and "three [bold]not markup[/bold]" in table.out


async def test_conversation_show_refuses_bad_ids_and_reports_unknown_ones(ops: Ops) -> None:
    bad = await ops("conversation", "show", "not-a-uuid")
    unknown = await ops("conversation", "show", str(uuid.uuid4()))

    assert bad.code == 2 and "UUID" in bad.err
    assert unknown.code == 1 and "no conversation" in unknown.err


async def test_conversation_search_finds_words_through_the_gin_index(
    ops: Ops, make_service: ServiceFactory, engine: AsyncEngine
) -> None:
    channel, word = channel_name(), f"zebra{uuid.uuid4().hex[:8]}"
    await chat(make_service, channel, "finder", f"where is the {word} tonight", "unrelated")
    await chat(make_service, channel, "other", f"{word} stripes and more")

    results = (await ops("conversation", "search", word, "--json")).data["results"]

    users = sorted({r["channel_user_id"] for r in results})
    assert users == ["finder", "other"]
    assert all(f"«{word}»" in r["snippet"] for r in results)
    assert all(r["channel"] == channel and r["conversation_id"] for r in results)
    stamps = [r["timestamp"] for r in results]
    assert stamps == sorted(stamps, reverse=True)
    narrowed = (await ops("conversation", "search", f"{word} -stripes", "--json")).data
    assert {r["channel_user_id"] for r in narrowed["results"]} == {"finder"}
    assert (
        len((await ops("conversation", "search", word, "-n", "1", "--json")).data["results"]) == 1
    )
    nothing = (await ops("conversation", "search", f"{word}nomatch", "--json")).data
    assert nothing["results"] == []
    table = await ops("conversation", "search", word)
    assert table.code == 0 and "finder" in table.out and "«" not in table.out
    async with engine.begin() as connection:  # would the planner use the index at all?
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = await connection.execute(
            sql(
                "EXPLAIN SELECT id FROM messages "
                "WHERE to_tsvector('simple', content) @@ websearch_to_tsquery('simple', :q)"
            ),
            {"q": word},
        )
    # Each partition's own part of ix_messages_content_fts, named by Postgres.
    assert "to_tsvector_idx" in "\n".join(row[0] for row in plan)


async def test_conversation_search_refuses_empty_text(ops: Ops) -> None:
    result = await ops("conversation", "search", "   ")

    assert result.code == 2 and "words" in result.err


async def test_a_shared_conversation_is_shown_and_searched_with_its_writers(
    ops: Ops, make_service: ServiceFactory
) -> None:
    service, word = await make_service(), f"otter{uuid.uuid4().hex[:8]}"
    thread = f"{uuid.uuid4().int % 10**6}.000300"
    people = [new_user(), new_user()]
    for person in people:
        message = IncomingMessage(
            "slack", person, f"{word} from {person}", platform_message_id=uuid.uuid4().hex,
            chat_id="C9", thread_id=thread, chat_kind=ChatKind.THREAD,
        )  # fmt: skip
        reply = await service.handle(message)

    shown = (await ops("conversation", "show", str(reply.conversation_id), "--json")).data
    found = (await ops("conversation", "search", word, "--json")).data["results"]
    table = await ops("conversation", "show", str(reply.conversation_id))

    assert shown["conversation"]["scope"] == f"chat:C9:thread:{thread}"
    assert shown["conversation"]["user_id"] is None  # everyone's, nobody's own
    assert sorted(r["channel_user_id"] for r in found if r["role"] == "user") == sorted(people)
    assert table.code == 0 and "shared by everyone" in table.out
