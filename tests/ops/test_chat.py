"""`bot ops chat list|show|set|unset`: a chat's settings, validated, in force where they
apply, and shown beside the conversations held in the chat."""

from __future__ import annotations

import uuid

import pytest

from bot.domain import ChatKind, IncomingMessage
from bot.service import ConversationService
from tests.ops.conftest import Ops
from tests.support import new_user

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_flags")]


def in_chat(user: str, chat: str, text: str, thread: str | None = None) -> IncomingMessage:
    return IncomingMessage(
        "telegram", user, text, platform_message_id=uuid.uuid4().hex, chat_id=chat,
        thread_id=thread, chat_kind=ChatKind.THREAD if thread else ChatKind.GROUP,
    )  # fmt: skip


async def test_set_show_list_and_unset_a_chats_settings(
    ops: Ops, service: ConversationService
) -> None:
    chat, dana = "-1009001", new_user()
    set_ = await ops(
        "chat", "set", "telegram", chat, "default_model=chat-model", "muted=off",
        "conversation_mode=per_user", "--json",
    )  # fmt: skip
    thread = await ops("chat", "set", "telegram", chat, "--thread", "5", "temperature=0.2")
    await service.handle(in_chat(dana, chat, "hello"))
    await service.handle(in_chat(dana, chat, "in the topic", thread="5"))

    shown = (await ops("chat", "show", "telegram", chat, "--thread", "5", "--json")).data
    listed = (await ops("chat", "list", "telegram", "--json")).data["chat_configs"]
    whole_chat = (await ops("chat", "show", "telegram", chat, "--json")).data

    assert set_.data["row"]["default_model"] == "chat-model"
    assert set_.data["row"]["settings"] == {"muted": False, "conversation_mode": "per_user"}
    assert thread.code == 0
    values = {v["key"]: (v["value"], v["from"]) for v in shown["values"]}
    assert values["default_model"] == ("chat-model", "chat")
    assert values["temperature"] == (0.2, "thread")
    assert values["max_tokens"][1] == "LLM_MAX_TOKENS"
    assert [c["scope"] for c in shown["conversations"]] == [f"chat:{chat}:thread:5"]
    assert {c["scope"] for c in whole_chat["conversations"]} == {
        f"chat:{chat}",
        f"chat:{chat}:thread:5",
    }
    assert [(r["chat_id"], r["thread_id"]) for r in listed] == [(chat, ""), (chat, "5")]

    unset = await ops("chat", "unset", "telegram", chat, "default_model", "muted",
                      "conversation_mode", "--json")  # fmt: skip
    assert unset.data["row"] is None  # nothing left set: the row is gone
    left = (await ops("chat", "list", "--json")).data["chat_configs"]
    assert [(r["chat_id"], r["thread_id"]) for r in left] == [(chat, "5")]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["set", "telegram", "-1", "conversation_mode=everyone"], "one of per_user, shared"),
        (["set", "telegram", "-1", "muted=perhaps"], "true or false"),
        (["set", "telegram", "-1", "colour=blue"], "valid keys:"),
        (["unset", "telegram", "-1", "colour"], "unknown key 'colour'"),
        (["set", "nowhere", "-1", "muted=on"], "unknown channel"),
    ],
)
async def test_bad_settings_are_refused_and_nothing_changes(
    ops: Ops, args: list[str], says: str
) -> None:
    ran = await ops("chat", *args)

    assert ran.code == 2 and says in ran.err, ran
    assert (await ops("chat", "list", "--json")).data["chat_configs"] == []
