"""TLS in the settings: libpq's sslmode/sslrootcert/sslcert/sslkey in DATABASE_URL become
asyncpg's `ssl`, redis-py's ssl_* options in REDIS_URL are checked, and the passwords of
TLS keys (sslpassword, ssl_password) are masked like any other password."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.logs import redact
from bot.urls import asyncpg_dsn, database_connect_args, redact_url
from tests.security.servers import Certificates

BASE = "postgresql://bot:s3cretpw@db.example:5432/chat"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


def database_url(url: str) -> str:
    found = Settings(_env_file=None, database_url=url).database_url
    assert found is not None
    return found.get_secret_value()


def refused(**settings: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, **settings)
    message = str(caught.value)
    assert "s3cretpw" not in message and "\n" not in message
    return message


@pytest.mark.parametrize(
    "mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_libpq_sslmode_becomes_asyncpgs_ssl(mode: str) -> None:
    assert database_url(f"{BASE}?sslmode={mode}&target_session_attrs=primary") == (
        f"postgresql+asyncpg://bot:s3cretpw@db.example:5432/chat?ssl={mode}"
        "&target_session_attrs=primary"
    )
    assert database_url(f"{BASE}?ssl={mode}").endswith(f"?ssl={mode}")


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("sslmode=sometimes", "sslmode must be one of disable, allow, prefer, require"),
        ("ssl=true", "ssl must be one of disable, allow, prefer, require"),
        ("sslmode=require&ssl=require", "not both"),
        ("sslcrl=/etc/crl.pem", "sslcrl is not supported"),
        ("statement_cache_size=0", "statement_cache_size is not supported; the parameters"),
        ("application_name=x", "set DATABASE_POOLER=transaction"),
        ("sslrootcert=/etc/ca.pem", "need sslmode=require, verify-ca or verify-full"),
        ("sslmode=prefer&sslrootcert=/etc/ca.pem", "need sslmode=require"),
    ],
)
def test_bad_tls_options_of_the_database_url_are_refused_readably(query: str, says: str) -> None:
    message = refused(database_url=f"{BASE}?{query}")
    assert message.startswith("invalid setting DATABASE_URL:")
    assert says in message


def test_certificate_files_become_an_ssl_context(certificates: Certificates) -> None:
    tls = f"sslmode=verify-full&sslrootcert={certificates.ca}"
    url = database_url(f"{BASE}?{tls}&target_session_attrs=any")

    plain, connect_args = database_connect_args(url)

    assert plain == f"postgresql+asyncpg://{BASE.partition('://')[2]}?target_session_attrs=any"
    context = connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    authorities = context.get_ca_certs()
    assert len(authorities) == 1 and "Testing CA" in str(authorities[0]["subject"])

    _, verify_ca = database_connect_args(f"{BASE}?sslmode=verify-ca&sslrootcert={certificates.ca}")
    assert verify_ca["ssl"].verify_mode is ssl.CERT_REQUIRED
    assert not verify_ca["ssl"].check_hostname


def test_a_client_certificate_is_loaded(certificates: Certificates) -> None:
    query = f"sslmode=require&sslcert={certificates.cert}&sslkey={certificates.key}"
    _, connect_args = database_connect_args(f"{BASE}?{query}")
    assert isinstance(connect_args["ssl"], ssl.SSLContext)


def test_modes_alone_need_no_connect_args() -> None:
    url = database_url(f"{BASE}?sslmode=require")
    assert database_connect_args(url) == (url, {})
    assert database_connect_args(BASE) == (database_url(BASE), {})


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(ConfigError) as caught:
        database_connect_args(f"{BASE}?sslmode=verify-full&sslrootcert={missing}")
    assert f"DATABASE_URL: cannot read sslrootcert {missing}" in str(caught.value)
    assert "s3cretpw" not in str(caught.value)


def test_asyncpg_dsn_is_the_libpq_form(certificates: Certificates) -> None:
    url = database_url(f"{BASE}?sslmode=verify-full&sslrootcert={certificates.ca}")
    assert asyncpg_dsn(url) == (
        f"postgresql://bot:s3cretpw@db.example:5432/chat?sslmode=verify-full"
        f"&sslrootcert={certificates.ca}"
    )


@pytest.mark.parametrize(
    "url",
    [
        "rediss://:s3cretpw@cache.example:6380/0?ssl_ca_certs=/etc/ca.pem",
        "rediss://cache.example:6380/0?ssl_cert_reqs=required&ssl_check_hostname=true",
        "rediss://cache.example:6380/0?ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        "rediss://cache.example:6380/0?ssl_cert_reqs=none",
    ],
)
def test_redis_tls_options_are_kept_as_written(url: str) -> None:
    settings = load_settings(_env_file=None, redis_url=url)
    assert settings.redis_url is not None and settings.redis_url.get_secret_value() == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://:s3cretpw@cache:6379/0?ssl_ca_certs=/etc/ca.pem", "rediss://"),
        ("rediss://:s3cretpw@cache:6380/0?ssl_cert_reqs=maybe", "none, optional or required"),
        ("rediss://:s3cretpw@cache:6380/0?ssl_verify=yes", "ssl_verify is not"),
    ],
)
def test_bad_redis_tls_options_are_refused_readably(url: str, says: str) -> None:
    message = refused(redis_url=url)
    assert message.startswith("invalid setting REDIS_URL:")
    assert says in message


@pytest.mark.parametrize(
    "url",
    [
        "rediss://cache:6380/0?ssl_keyfile=/k.pem&ssl_password=keyS3cret&ssl_certfile=/c.pem",
        "postgresql://bot@db/chat?sslmode=require&sslkey=/k.pem&sslpassword=keyS3cret",
        "postgresql://bot@db/chat?sslpassword=keyS3cret&sslkey=/k.pem&sslmode=verify-ca",
    ],
)
def test_the_password_of_a_tls_key_is_masked(url: str) -> None:
    for shown in (redact_url(url), redact(f"connecting to {url} failed")):
        assert "keyS3cret" not in shown
        assert "password=***" in shown

    field = "redis_url" if url.startswith("rediss") else "database_url"
    settings = load_settings(_env_file=None, **{field: url})
    assert settings.secrets() == ["keyS3cret"]
