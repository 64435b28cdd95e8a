"""No password reaches ops output, and masking one never breaks the output around it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from bot.config import Settings
from tests.ops.conftest import Ops, chat
from tests.support import ServiceFactory, new_user

pytestmark = pytest.mark.timeout(15)

REPORTS = (("health",), ("stats",))


def with_password(url: str, password: str) -> str:
    """The URL with this password (the test servers trust local connections: any works)."""
    parts = urlsplit(url)
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port or 5432}"
    return parts._replace(netloc=netloc).geturl()


def paths(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key of a JSON document, as the path of keys leading to it."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*path, key)
            yield from paths(value, (*path, key))
    elif isinstance(data, list):
        for value in data:
            yield from paths(value, (*path, "[]"))


def strings(data: Any) -> Iterator[str]:
    """Every string value of a JSON document."""
    if isinstance(data, dict):
        for value in data.values():
            yield from strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from strings(value)
    elif isinstance(data, str):
        yield data


@pytest.mark.parametrize("password", ["e", "postgres"])
async def test_a_password_like_a_letter_or_a_json_key_leaves_the_json_intact(
    ops: Ops, make_service: ServiceFactory, settings: Settings, password: str
) -> None:
    assert settings.database_url is not None
    plain_url = settings.database_url.get_secret_value()
    channel, user = "console", new_user()
    await chat(make_service, channel, user, "hello")

    for args in (*REPORTS, ("user", "show", channel, user)):
        plain = (await ops(*args, "--json")).data
        result = await ops(*args, "--json", DATABASE_URL=with_password(plain_url, password))

        masked = result.data  # parses
        assert set(paths(masked)) == set(paths(plain)), args  # every key intact
        assert f":{password}@" not in result.out + result.err
        if len(password) >= 4:  # long enough to be masked wherever it appears
            assert not any(password in value for value in strings(masked)), args
    health = (await ops("health", "--json", DATABASE_URL=with_password(plain_url, password))).data
    assert ":***@127.0.0.1" in health["postgres"]["url"]


async def test_tables_and_errors_never_contain_the_database_password(
    ops: Ops, make_service: ServiceFactory, settings: Settings
) -> None:
    assert settings.database_url is not None
    secret = "ops-Secret-pw-7"
    url = with_password(settings.database_url.get_secret_value(), secret)
    channel, user = "console", new_user()
    await chat(make_service, channel, user, "hello")

    outputs = []
    for args in (*REPORTS, ("user", "show", channel, user)):
        for extra in ((), ("--json",)):
            result = await ops(*args, *extra, DATABASE_URL=url)
            assert result.code == 0, result
            outputs.append(result.out + result.err)
    missing = await ops("user", "show", channel, "nobody", DATABASE_URL=url)
    outputs.append(missing.out + missing.err)
    down = await ops("stats", DATABASE_URL=url.replace(":5432", ":1"))
    outputs.append(down.out + down.err)

    assert all(secret not in output for output in outputs)
    assert "***" in outputs[0]  # the health table shows the URL, masked
    assert down.code == 1 and "unavailable" in down.err
