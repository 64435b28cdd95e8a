"""`bot bench --json` run as a process, as an operator runs it."""

from __future__ import annotations

import json
from typing import Any

from tests.test_cli import bot


async def bench_report(*args: str, database_url: str, redis_url: str) -> dict[str, Any]:
    """The report of `bot bench ARGS --json` on these servers; fails the test if it fails."""
    result = await bot("bench", *args, "--json", DATABASE_URL=database_url, REDIS_URL=redis_url)
    assert result.code == 0, result.err
    parsed: dict[str, Any] = json.loads(result.out)
    return parsed
