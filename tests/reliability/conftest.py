"""Fixtures of the reliability scenarios: the owned Postgres database, and the figures.

Every scenario adds its result line to a collector printed at the end of the run
(`pytest tests/reliability -q -s` shows each line as it comes too).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.embedded import EmbeddedPostgres
from tests.conftest import create_migrated_database
from tests.reliability.load import LoadResult

OWNED_DATABASE = "bot_reliability"
FIGURES = pytest.StashKey[list[str]]()

Report = Callable[[LoadResult], None]


@pytest.fixture(scope="package")
async def owned_pg_url(fault_postgres: EmbeddedPostgres) -> str:
    """A migrated database of these scenarios on the fault tests' own Postgres."""
    return await create_migrated_database(fault_postgres.url, OWNED_DATABASE)


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
