"""`bot ops config show|set`: a channel's row, validated, and its cache invalidated."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import Keys
from bot.config import Settings
from bot.service import ConversationService
from tests.ops.conftest import Ops
from tests.support import fetch, msg, new_user

pytestmark = [pytest.mark.timeout(15), pytest.mark.usefixtures("clean_flags")]


async def test_config_set_validates_upserts_and_invalidates_the_cache(
    ops: Ops, settings: Settings, service: ConversationService, engine: AsyncEngine,
    redis: Redis, keys: Keys,
) -> None:  # fmt: skip
    user = new_user()
    assert (await service.handle(msg(user, "hi"))).model == settings.default_model
    assert await redis.exists(keys.channel_config("console")) == 1  # cached on that miss

    ran = await ops(
        "config", "set", "console", "default_model=llama3:8b",
        "rate_limit_per_minute=30", "system_prompt=Be brief, and kind.", "temperature=0.5",
        "max_tokens=500", "--json",
    )  # fmt: skip

    assert ran.data["cache_invalidated"] is True
    assert ran.data["settings"] == {
        "rate_limit_per_minute": 30, "system_prompt": "Be brief, and kind.",
        "temperature": 0.5, "max_tokens": 500,
    }  # fmt: skip
    rows = await fetch(engine, "SELECT default_model, settings FROM channel_configs")
    assert rows == [("llama3:8b", ran.data["settings"])]
    assert await redis.exists(keys.channel_config("console")) == 0
    assert (await service.handle(msg(user, "again"))).model == "llama3:8b"

    ran = await ops("config", "set", "console", "temperature=", "default_model=", "--json")
    assert "temperature" not in ran.data["settings"] and ran.data["default_model"] is None

    shown = (await ops("config", "show", "console", "--json")).data
    values = {v["key"]: (v["value"], v["from"]) for v in shown["values"]}
    assert values["rate_limit_per_minute"] == (30, "channel")
    assert values["default_model"] == (settings.default_model, "DEFAULT_MODEL")
    listed = (await ops("config", "show", "--json")).data["channel_configs"]
    assert [row["channel"] for row in listed] == ["console"]


@pytest.mark.parametrize(
    ("pairs", "says"),
    [
        (["colour=blue"], "valid keys: default_model, max_tokens, quota_chat_day_tokens"),
        (["temperature=3"], "temperature must be from 0 to 2"),
        (["rate_limit_per_minute=fast"], "must be a whole number"),
        (["max_tokens=0"], "max_tokens must be from 1"),
        (["default_model=not a model"], "is not a model name"),
        (["system_prompt"], "is not key=value"),
        (["max_tokens=5", "max_tokens=6"], "given twice"),
        (["system_prompt=caf\udce9"], "not valid UTF-8"),
    ],
)
async def test_config_set_refuses_bad_input_and_changes_nothing(
    ops: Ops, engine: AsyncEngine, pairs: list[str], says: str
) -> None:
    ran = await ops("config", "set", "slack", *pairs)
    assert ran.code == 2 and says in ran.err, ran
    assert await fetch(engine, "SELECT 1 FROM channel_configs") == []
