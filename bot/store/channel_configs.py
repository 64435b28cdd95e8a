"""The SQL of `channel_configs` as operators change it (the message flow reads a row in
bot/store/conversations.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import ChannelConfigRow
from bot.store.database import Database

_CONFIG_COLUMNS = "channel_type, default_model, settings, created_at, updated_at"
_CHANNEL_CONFIGS = text(f"SELECT {_CONFIG_COLUMNS} FROM channel_configs ORDER BY channel_type")
_UPSERT_CHANNEL_CONFIG = text(
    f"""
    INSERT INTO channel_configs (channel_type, default_model, settings)
    VALUES (:channel, CASE WHEN :set_model THEN CAST(:default_model AS varchar) END, :patch)
    ON CONFLICT (channel_type) DO UPDATE SET
        default_model = CASE WHEN :set_model THEN EXCLUDED.default_model
                             ELSE channel_configs.default_model END,
        settings = (channel_configs.settings - CAST(:removed AS text[])) || EXCLUDED.settings,
        updated_at = now()
    RETURNING {_CONFIG_COLUMNS}
    """
).bindparams(bindparam("patch", type_=JSONB))


class ChannelConfigQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def rows(self) -> list[ChannelConfigRow]:
        async def work(connection: AsyncConnection) -> list[ChannelConfigRow]:
            return [_config_row(row) for row in await connection.execute(_CHANNEL_CONFIGS)]

        return await self._database.transaction(work)

    async def update(
        self, channel: str, patch: dict[str, Any], removed: Sequence[str]
    ) -> ChannelConfigRow:
        """Upsert a channel's row: `default_model` goes to its column, the rest into
        `settings` (merged); keys in `removed` are taken out (default_model set NULL)."""
        settings = {k: v for k, v in patch.items() if k != "default_model"}
        params = {
            "channel": channel,
            "set_model": "default_model" in patch or "default_model" in removed,
            "default_model": patch.get("default_model"),
            "patch": settings,
            "removed": [key for key in removed if key != "default_model"],
        }

        async def work(connection: AsyncConnection) -> ChannelConfigRow:
            return _config_row((await connection.execute(_UPSERT_CHANNEL_CONFIG, params)).one())

        return await self._database.transaction(work)


def _config_row(row: Any) -> ChannelConfigRow:
    return ChannelConfigRow(
        row.channel_type, row.default_model, dict(row.settings), row.created_at, row.updated_at
    )
