"""The platforms' adapter fixtures, shared with their own tests (tests/channels)."""

from tests.channels.test_discord import start_bot  # noqa: F401 - a fixture
from tests.channels.test_slack import start as slack_start  # noqa: F401 - a fixture
from tests.channels.test_telegram import start  # noqa: F401 - a fixture
