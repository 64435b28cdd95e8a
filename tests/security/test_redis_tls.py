"""TLS to Redis through the settings: a rediss:// REDIS_URL with redis-py's own query
options (ssl_ca_certs, ssl_cert_reqs, ...) against a redis-server that only speaks TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import Settings
from bot.stores import keys_for
from tests.security.conftest import Captured, bot_env, run_bot, unique
from tests.security.servers import Certificates, OwnRedis

pytestmark = pytest.mark.timeout(120)

PASSWORD = "tlsRedis+Pw/5d7e"
KEY_PASSPHRASE = "keyPass-8f1c2a"


@pytest.fixture
def tls_redis(certificates: Certificates, tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis", PASSWORD, certificates)
    server.start()
    yield server
    server.stop()


def env_for(tmp_path: Path, database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    return bot_env(
        tmp_path,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="INFO",
        REDIS_SOCKET_CONNECT_TIMEOUT_SECONDS="1",
    )


async def test_a_message_round_trips_over_tls(
    tls_redis: OwnRedis, certificates: Certificates, database_url: str, tmp_path: Path
) -> None:
    prefix, user = f"{unique('tls')}:", unique("tls_user")
    url = tls_redis.url(f"ssl_ca_certs={certificates.ca}&ssl_cert_reqs=required")
    env = env_for(tmp_path, database_url, url, prefix)

    first = await run_bot("chat", "--user", user, cwd=tmp_path, env=env, stdin="over tls\n")
    second = await run_bot("chat", "--user", user, cwd=tmp_path, env=env, stdin="again\n")
    health = await run_bot("ops", "health", "--json", cwd=tmp_path, env=env)

    assert first.code == 0 and second.code == 0, first.err + second.err
    assert "cannot reach Redis" not in first.err + second.err
    assert '"over tls" (0 earlier' in first.out and '"again" (2 earlier' in second.out
    # The hot state is on the TLS server: the session of this user, under this prefix.
    keys = keys_for(Settings(_env_file=None, redis_key_prefix=prefix))
    client = tls_redis.client()
    try:
        session = client.hgetall(keys.session("console", user))
    finally:
        client.close()
    assert session and b"conversation_id" in session
    report = json.loads(health.out)
    assert report["redis"]["ok"] is True, report
    assert report["redis"]["url"].startswith("rediss://:***@127.0.0.1:")
    assert PASSWORD not in health.out + health.err


async def test_plain_redis_url_to_the_tls_port_fails_clearly(
    tls_redis: OwnRedis, database_url: str, tmp_path: Path
) -> None:
    plain = tls_redis.url().replace("rediss://", "redis://", 1)
    env = env_for(tmp_path, database_url, plain, f"{unique('tls')}:")

    chatted = await run_bot("chat", "--user", unique("u"), cwd=tmp_path, env=env, stdin="hi\n")
    health = await run_bot("ops", "health", "--json", cwd=tmp_path, env=env)

    assert chatted.code == 0  # Redis down only degrades the bot: it answers from Postgres
    assert '"hi"' in chatted.out
    warning = next(line for line in chatted.err.splitlines() if "cannot reach Redis" in line)
    assert "redis://:***@127.0.0.1" in warning
    assert "if that server speaks TLS, the URL must start with rediss://" in warning
    report = json.loads(health.out)
    assert health.code == 1 and report["redis"]["ok"] is False, report
    assert PASSWORD not in chatted.text + health.text


async def test_an_unknown_certificate_authority_fails_clearly(
    tls_redis: OwnRedis, certificates: Certificates, database_url: str, tmp_path: Path
) -> None:
    url = tls_redis.url(f"ssl_ca_certs={certificates.other_ca}")
    env = env_for(tmp_path, database_url, url, f"{unique('tls')}:")

    chatted = await run_bot("chat", "--user", unique("u"), cwd=tmp_path, env=env, stdin="hi\n")

    assert chatted.code == 0 and '"hi"' in chatted.out
    warning = next(line for line in chatted.err.splitlines() if "cannot reach Redis" in line)
    assert "certificate verify failed" in warning
    assert "ssl_ca_certs" in warning  # says which option points at the CA


async def test_a_client_certificate_passphrase_is_never_shown(
    tls_redis: OwnRedis, certificates: Certificates, database_url: str, tmp_path: Path
) -> None:
    """ssl_password (a client key's passphrase) is a secret like the password."""
    query = (
        f"ssl_ca_certs={certificates.ca}&ssl_certfile={certificates.cert}"
        f"&ssl_keyfile={certificates.key}&ssl_password={KEY_PASSPHRASE}"
    )
    env = env_for(tmp_path, database_url, tls_redis.url(query), f"{unique('tls')}:")
    env["LOG_LEVEL"] = "DEBUG"
    captured = Captured()

    for args in (("ops", "health"), ("ops", "health", "--json"), ("ops", "stats")):
        ran = captured.add_run(await run_bot(*args, cwd=tmp_path, env=env))
        assert ran.code == 0, ran.text
    assert captured.leaks([KEY_PASSPHRASE, PASSWORD]) == []
    assert "ssl_password=***" in captured.items[0][1]
