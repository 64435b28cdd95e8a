"""`bot ops partitions list|create` on the run's database."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.store.partitions import add_months, month_name, month_start
from tests.ops.conftest import Ops


async def test_create_makes_months_ahead_and_list_shows_their_bounds(ops: Ops) -> None:
    current = month_start(datetime.now(UTC))
    farthest = month_name(add_months(current, 7))

    made = await ops("partitions", "create", "--ahead", "7", "--json")

    assert made.code == 0, made.err
    assert farthest in made.data["created"]
    again = await ops("partitions", "create", "--ahead", "7", "--json")
    assert again.data["created"] == []
    listed = (await ops("partitions", "list", "--json")).data["partitions"]
    by_name = {p["name"]: p for p in listed}
    assert by_name[month_name(current)]["rows"] >= 0
    assert by_name[farthest]["to"].startswith(f"{add_months(current, 8):%Y-%m-%d}")
    assert listed[-1]["name"] == "messages_default" and listed[-1]["from"] is None
    table = await ops("partitions", "list")
    assert table.code == 0 and farthest in table.out


async def test_create_refuses_a_bad_number_of_months(ops: Ops) -> None:
    result = await ops("partitions", "create", "--ahead", "-1")

    assert result.code == 2 and "months" in result.err
