"""Shared fixtures: real Postgres and Redis, and a service wired to them.

Servers, in order of preference: TEST_DATABASE_URL / TEST_REDIS_URL; the local
servers at 127.0.0.1:5432 (user postgres) and 127.0.0.1:6379 when they answer;
else embedded ones started for this run. Each run creates its own database and
drops it after; each test gets its own Redis key prefix and deletes its keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cache.keys import glob_escape
from bot.cache.streams import StreamLedger
from bot.config import Settings, default_data_dir
from bot.emulators.discord_api import FakeDiscord
from bot.emulators.llm_api import LLMServer
from bot.emulators.slack_api import FakeSlack
from bot.emulators.telegram_api import FakeBotApi
from bot.metrics import Metrics
from bot.responders import Responder
from bot.runtime import build_service
from bot.service import ConversationService
from bot.store.engine import create_engine
from bot.stores import create_redis, keys_for
from tests.redis_servers import RedisCluster, redis_cluster
from tests.support import STREAM_LEASE, ManualClock, ServiceFactory, migrate_to_head

if TYPE_CHECKING:
    from bot import embedded

# Tests talk to 127.0.0.1 only; a proxy from the environment must not get in between.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


@pytest.fixture(scope="session", autouse=True)
def user_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """XDG_DATA_HOME of this run, for every test and the processes they start: DATA_DIR
    defaults to the per-user data directory, which a test must never write into."""
    home = tmp_path_factory.mktemp("user-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(home))
        assert default_data_dir().is_relative_to(home), "this platform ignores XDG_DATA_HOME"
        yield home


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def server_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(admin Postgres URL, Redis URL) of the servers this run uses."""
    from bot import embedded

    started: list[Any] = []
    pg_url = os.environ.get("TEST_DATABASE_URL")
    if not pg_url and _answers("127.0.0.1", 5432):
        pg_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    if not pg_url:
        pg = embedded.EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
        pg.start()
        started.append(pg)
        pg_url = pg.url
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not redis_url and _answers("127.0.0.1", 6379):
        redis_url = "redis://127.0.0.1:6379/0"
    if not redis_url:
        rd = embedded.EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        rd.start()
        started.append(rd)
        redis_url = rd.url
    try:
        yield pg_url, redis_url
    finally:
        for server in reversed(started):
            server.stop()


def _plain(url: str) -> str:
    """asyncpg wants postgresql://, not the SQLAlchemy driver form."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1).replace(
        "postgres://", "postgresql://", 1
    )


def with_database(url: str, name: str) -> str:
    base, _, query = _plain(url).partition("?")
    base = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{base}/{name}" + (f"?{query}" if query else "")


async def create_database(admin_url: str, name: str) -> str:
    connection = await asyncpg.connect(_plain(admin_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(_plain(admin_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def database_url(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """A database of this run, migrated to head, dropped at the end."""
    admin_url = server_urls[0]
    name = f"bot_test_{uuid.uuid4().hex[:12]}"
    yield await create_migrated_database(admin_url, name)
    await drop_database(admin_url, name)


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> str:
    return server_urls[1]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[embedded.EmbeddedRedis]:
    """A Redis server of this test alone: to stop, restart or reconfigure."""
    from bot import embedded

    server = embedded.EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster of the run's own (3 primaries, 3 replicas), started when first
    asked for; tests on it use key prefixes of their own."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[embedded.EmbeddedPostgres]:
    """A Postgres server of the fault tests' own, to stop, restart, pause and kill
    connections of. Each module works in a database of its own on it, and leaves the
    server up and answering (resumed and started) after each test."""
    from bot import embedded

    # Not under pytest's basetemp: every pytest session that starts (another one's on
    # this machine too) makes /tmp/pytest-of-<user> private again, and as root Postgres
    # runs as another user, whose pg_ctl could then no longer reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="bot-fault-pg-"))
    server = embedded.EmbeddedPostgres(root / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root)


@pytest.fixture
def fault_postgres_restored(fault_postgres: embedded.EmbeddedPostgres) -> Iterator[None]:
    """Whatever a test did to the fault tests' Postgres, the next one finds it up and
    answering."""
    yield
    fault_postgres.resume()
    fault_postgres.start()


@pytest.fixture(autouse=True)
async def empty_inbox(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Events a test left in the inbox of the run's database (a worker it killed, a reply
    it deferred) must not be answered by a later test's worker, whose channel is the same."""
    yield
    if "database_url" not in request.fixturenames:
        return
    connection = await asyncpg.connect(_plain(request.getfixturevalue("database_url")))
    try:
        await connection.execute("DELETE FROM inbox")
    finally:
        await connection.close()


async def create_migrated_database(admin_url: str, name: str) -> str:
    """A new database `name` on the server of `admin_url`, migrated to head."""
    url = await create_database(admin_url, name)
    await migrate_to_head(url)
    return url


@pytest.fixture
async def make_settings(
    database_url: str, redis_url: str
) -> AsyncIterator[Callable[..., Settings]]:
    """Settings for the test servers with a key prefix of this test's own, whose keys
    are deleted at the end (also those written by worker processes the test ran)."""
    prefix = f"test:{uuid.uuid4().hex[:10]}:"

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": redis_url,
            "redis_key_prefix": prefix,
            "db_pool_size": 5,
            "echo_stream_delay_seconds": 0,  # streamed replies at once: tests wait for nothing
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    yield make
    cleaner = Redis.from_url(redis_url)
    try:
        await delete_prefix(cleaner, prefix)
    finally:
        await cleaner.aclose()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    assert settings.database_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value())
    yield engine
    await engine.dispose()


async def delete_prefix(client: Redis, prefix: str) -> None:
    """Delete every key under a test's prefix, read literally (not as a glob)."""
    assert prefix, "an empty prefix would match every key of the shared Redis"
    keys = [key async for key in client.scan_iter(match=f"{glob_escape(prefix)}*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url is not None
    client = create_redis(settings, settings.redis_url.get_secret_value())
    yield client
    await delete_prefix(client, settings.redis_key_prefix)
    await client.aclose()


@pytest.fixture
def streams(redis: Redis, settings: Settings) -> StreamLedger:
    """The ledger of streaming replies on the suite's Redis, on a clock the test moves
    (`lapse_leases(streams)` makes every lease lapse)."""
    return StreamLedger(redis, keys_for(settings), STREAM_LEASE, clock=ManualClock())


@pytest.fixture
async def make_service(
    make_settings: Callable[..., Settings], settings: Settings
) -> AsyncIterator[ServiceFactory]:
    """Build services like a worker does: own engine and Redis client, shared prefix.

    Several services from one factory behave like several workers of one deployment.
    Their keys on the suite's Redis are deleted at teardown; a test's own Redis server
    (redis_url=...) is the test's to clean.
    """
    built: list[tuple[AsyncEngine, Redis]] = []
    prefixes: set[str] = set()

    async def make(
        responder: Responder | None = None,
        redis_url: str | None = None,
        database_url: str | None = None,
        metrics: Metrics | None = None,
        **overrides: Any,
    ) -> ConversationService:
        overrides.setdefault("redis_key_prefix", settings.redis_key_prefix)
        custom = make_settings(**overrides)
        db = database_url or custom.database_url.get_secret_value()  # type: ignore[union-attr]
        rd = redis_url or custom.redis_url.get_secret_value()  # type: ignore[union-attr]
        engine = create_engine(custom, db)
        client = create_redis(custom, rd)
        built.append((engine, client))
        if redis_url is None:
            prefixes.add(custom.redis_key_prefix)
        return build_service(custom, engine, client, responder, metrics)

    yield make
    for engine, client in built:
        await client.aclose()
        await engine.dispose()
    if prefixes:
        assert settings.redis_url is not None
        cleaner = create_redis(settings, settings.redis_url.get_secret_value())
        for prefix in prefixes:
            await delete_prefix(cleaner, prefix)
        await cleaner.aclose()


@pytest.fixture
async def service(make_service: ServiceFactory, redis: Redis) -> ConversationService:
    return await make_service()


# -- local stand-ins of the platforms and the LLM, checked at teardown ----------------------


@pytest.fixture
async def telegram() -> AsyncIterator[FakeBotApi]:
    server = FakeBotApi()
    await server.start()
    yield server
    await server.close()
    assert server.problems == []  # what the adapter sent Telegram was well-formed


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    yield server
    await server.stop()
    assert server.violations == []  # what the adapter sent Slack was well-formed


@pytest.fixture
async def discord_server() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    server = LLMServer()
    await server.start()
    yield server
    await server.stop()
