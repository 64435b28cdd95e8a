"""Fixtures of the reliability scenarios: the owned Postgres database, and the figures.

Every scenario adds its result line to a collector printed at the end of the run
(`pytest tests/reliability -q -s` shows each line as it comes too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.embedded import EmbeddedPostgres
from tests.conftest import create_migrated_database
from tests.reliability.load import LoadResult
from tests.support import engine_on

OWNED_DATABASE = "bot_reliability"
FIGURES = pytest.StashKey[list[str]]()

Report = Callable[[LoadResult], None]


@pytest.fixture(scope="package")
async def owned_pg_url(fault_postgres: EmbeddedPostgres) -> str:
    """A migrated database of these scenarios on the fault tests' own Postgres."""
    return await create_migrated_database(fault_postgres.url, OWNED_DATABASE)


@pytest.fixture
async def owned_pg(owned_pg_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the test's own, to count what the bot stored."""
    async with engine_on(owned_pg_url) as engine:
        yield engine


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    lines = request.config.stash.setdefault(FIGURES, [])

    def add(result: LoadResult) -> None:
        lines.append(result.line())
        print(f"\n{result.line()}")

    return add


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("reliability figures")
        for line in lines:
            terminalreporter.write_line(line)
