"""The SQL of `chat_configs`: a chat's (or a thread's) settings over its platform's
`channel_configs` row. thread_id '' is the chat itself."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import ChannelSettings, ChatConfigRow
from bot.store.database import Database

_COLUMNS = "channel_type, chat_id, thread_id, default_model, settings, created_at, updated_at"
# A chat's row and (for a thread) the thread's, in one statement without a BEGIN: what a
# message there is told. Sent by asyncpg itself; $1 channel, $2 chat, $3 thread or ''.
_LAYERS = """
    SELECT (SELECT json_build_object('default_model', default_model, 'settings', settings)
            FROM chat_configs
            WHERE channel_type = $1 AND chat_id = $2 AND thread_id = '') AS chat,
           (SELECT json_build_object('default_model', default_model, 'settings', settings)
            FROM chat_configs
            WHERE channel_type = $1 AND chat_id = $2 AND thread_id = $3 AND $3 <> '') AS thread
"""
_ROW = text(
    f"""
    SELECT {_COLUMNS} FROM chat_configs
    WHERE channel_type = :channel AND chat_id = :chat_id AND thread_id = :thread_id
    """
)
_ROWS = text(
    f"""
    SELECT {_COLUMNS} FROM chat_configs
    WHERE CAST(:channel AS varchar) IS NULL OR channel_type = :channel
    ORDER BY channel_type, chat_id, thread_id
    """
)
_UPSERT = text(
    f"""
    INSERT INTO chat_configs (channel_type, chat_id, thread_id, default_model, settings)
    VALUES (:channel, :chat_id, :thread_id,
            CASE WHEN :set_model THEN CAST(:default_model AS varchar) END, :patch)
    ON CONFLICT (channel_type, chat_id, thread_id) DO UPDATE SET
        default_model = CASE WHEN :set_model THEN EXCLUDED.default_model
                             ELSE chat_configs.default_model END,
        settings = (chat_configs.settings - CAST(:removed AS text[])) || EXCLUDED.settings,
        updated_at = now()
    RETURNING {_COLUMNS}
    """
).bindparams(bindparam("patch", type_=JSONB))
# A row left with nothing set is no row: the chat falls back to its platform again.
_DROP_EMPTY = text(
    """
    DELETE FROM chat_configs
    WHERE channel_type = :channel AND chat_id = :chat_id AND thread_id = :thread_id
      AND default_model IS NULL AND settings = '{}'::jsonb
    """
)


class ChatConfigQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def layers(
        self, channel: str, chat_id: str, thread_id: str | None
    ) -> tuple[ChannelSettings | None, ChannelSettings | None]:
        """The chat's row and, for a thread, the thread's (None: no row)."""
        row = await self._database.statement(_LAYERS, channel, chat_id, thread_id or "")
        if row is None:
            return None, None
        return _layer(row["chat"]), _layer(row["thread"])

    async def row(self, channel: str, chat_id: str, thread_id: str = "") -> ChatConfigRow | None:
        params = {"channel": channel, "chat_id": chat_id, "thread_id": thread_id}

        async def work(connection: AsyncConnection) -> ChatConfigRow | None:
            found = (await connection.execute(_ROW, params)).first()
            return None if found is None else _row(found)

        return await self._database.transaction(work)

    async def rows(self, channel: str | None = None) -> list[ChatConfigRow]:
        async def work(connection: AsyncConnection) -> list[ChatConfigRow]:
            return [_row(found) for found in await connection.execute(_ROWS, {"channel": channel})]

        return await self._database.transaction(work)

    async def update(
        self,
        channel: str,
        chat_id: str,
        thread_id: str,
        patch: dict[str, Any],
        removed: Sequence[str],
    ) -> ChatConfigRow | None:
        """Upsert a chat's row as `bot ops config set` does a channel's (`default_model` in
        its column, the rest merged into `settings`, `removed` keys taken out); None when
        nothing is left set (the row is deleted)."""
        where = {"channel": channel, "chat_id": chat_id, "thread_id": thread_id}
        params = {
            **where,
            "set_model": "default_model" in patch or "default_model" in removed,
            "default_model": patch.get("default_model"),
            "patch": {k: v for k, v in patch.items() if k != "default_model"},
            "removed": [key for key in removed if key != "default_model"],
        }

        async def work(connection: AsyncConnection) -> ChatConfigRow | None:
            row = _row((await connection.execute(_UPSERT, params)).one())
            gone = await connection.execute(_DROP_EMPTY, where)
            return None if gone.rowcount else row

        return await self._database.transaction(work)


def _layer(value: Any) -> ChannelSettings | None:
    """A row's settings as the statement hands them over (decoded JSON, or its text)."""
    if value is None:
        return None
    found = json.loads(value) if isinstance(value, str) else value
    return ChannelSettings(found["default_model"], dict(found["settings"] or {}))


def _row(row: Any) -> ChatConfigRow:
    return ChatConfigRow(
        row.channel_type,
        row.chat_id,
        row.thread_id,
        row.default_model,
        dict(row.settings),
        row.created_at,
        row.updated_at,
    )
