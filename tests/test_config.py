"""Settings: parsing from the environment and .env, defaults, and readable, secret-free errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Settings, load_settings, misspelt_settings
from bot.errors import ConfigError
from bot.urls import asyncpg_dsn, redact_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the caller's environment or a .env in the cwd."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_follow_the_reference_design() -> None:
    settings = load_settings()

    assert settings.database_url is None and settings.redis_url is None
    assert settings.db_pool_size == 20
    assert settings.db_max_overflow == 10
    assert settings.db_pool_pre_ping is True
    assert settings.db_pool_recycle_seconds == 3600
    assert settings.session_ttl_seconds == 3600
    assert settings.context_ttl_seconds == 7200
    assert settings.active_window_seconds == 300
    assert settings.context_messages == 20
    assert settings.rate_limit_per_minute == 60
    assert settings.max_message_chars == 8000


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://bot:pw@db.example:5432/chat",
        "postgres://bot:pw@db.example:5432/chat",
        "postgresql+asyncpg://bot:pw@db.example:5432/chat",
        "POSTGRESQL://bot:pw@db.example:5432/chat",
    ],
)
def test_database_url_schemes_are_normalized_to_asyncpg(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", given)

    settings = load_settings()

    assert settings.database_url is not None
    assert (
        settings.database_url.get_secret_value()
        == "postgresql+asyncpg://bot:pw@db.example:5432/chat"
    )


def test_database_url_keeps_query_and_unix_socket_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres:///chat?host=/var/run/postgresql")

    settings = load_settings()

    assert settings.database_url is not None
    assert (
        settings.database_url.get_secret_value()
        == "postgresql+asyncpg:///chat?host=/var/run/postgresql"
    )


def test_libpq_several_hosts_are_accepted_for_failover(monkeypatch: pytest.MonkeyPatch) -> None:
    given = "postgresql://bot:pw@db1:5432,db2:5433/chat?target_session_attrs=read-write"
    monkeypatch.setenv("DATABASE_URL", given)

    settings = load_settings()

    assert settings.database_url is not None
    normalized = settings.database_url.get_secret_value()
    assert normalized == (
        "postgresql+asyncpg://bot:pw@/chat"
        "?host=db1:5432&host=db2:5433&target_session_attrs=read-write"
    )  # SQLAlchemy's form of it
    assert asyncpg_dsn(normalized) == given  # and back, for asyncpg.connect


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://u:s3cretpw@db1:5432,db2:nope/chat",
        "postgresql://u:s3cretpw@db1,:5432/chat",
        "mysql://u:s3cretpw@h/db",
        "sqlite:///s3cretpw.db",
        "postgresql+psycopg2://u:s3cretpw@h/db",
        "u:s3cretpw@h/db",
        "postgresql://",
        "postgresql://u:s3cretpw@h:notaport/db",
    ],
)
def test_bad_database_url_is_one_line_naming_the_setting_without_the_password(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    message = config_error(monkeypatch, DATABASE_URL=given)

    assert "DATABASE_URL" in message
    assert "s3cretpw" not in message


def test_mysql_url_error_says_what_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, DATABASE_URL="mysql://u:s3cretpw@h/db")

    assert message.startswith("invalid setting DATABASE_URL:")
    assert "postgresql://" in message


@pytest.mark.parametrize(
    "given",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:s3cretpw@cache.example:6380/3",
        "rediss://default:s3cretpw@cache.example:6380/15",
        "redis://cache.example",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=2",
    ],
)
def test_redis_url_forms_are_accepted(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("REDIS_URL", given)

    settings = load_settings()

    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == given


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("http://:s3cretpw@cache.example:6379/0", "redis://"),
        ("postgresql://u:s3cretpw@cache.example/0", "redis://"),
        ("redis://:s3cretpw@cache.example:6379/zero", "integer"),
        ("redis://:s3cretpw@cache.example:6379/1.5", "integer"),
        ("redis://:s3cretpw@cache.example:port/0", "port"),
        ("unix:///run/redis.sock?db=one&password=s3cretpw", "integer"),
    ],
)
def test_bad_redis_url_is_rejected_readably(
    monkeypatch: pytest.MonkeyPatch, given: str, says: str
) -> None:
    message = config_error(monkeypatch, REDIS_URL=given)

    assert message.startswith("invalid setting REDIS_URL:")
    assert says in message
    assert "s3cretpw" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_POOL_SIZE", "abc"),
        ("DB_POOL_SIZE", "0"),
        ("DB_POOL_SIZE", "-3"),
        ("DB_MAX_OVERFLOW", "-1"),
        ("SESSION_TTL_SECONDS", "1.5x"),
        ("RATE_LIMIT_PER_MINUTE", "0"),
        ("MAX_MESSAGE_CHARS", " "),
        ("DB_POOL_TIMEOUT_SECONDS", "0"),
        ("LOG_LEVEL", "chatty"),
    ],
)
def test_invalid_value_names_the_setting_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = config_error(monkeypatch, **{name: value})

    assert message.startswith(f"invalid setting {name}:")


def test_invalid_number_error_never_shows_a_given_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = config_error(
        monkeypatch,
        DATABASE_URL="mysql://u:s3cretpw@h/db",
        REDIS_URL="redis://:r3dispw@h:6379/x",
        DB_POOL_SIZE="abc",
    )

    assert "DATABASE_URL" in message and "REDIS_URL" in message and "DB_POOL_SIZE" in message
    assert "s3cretpw" not in message and "r3dispw" not in message


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:pw@h/db")
    monkeypatch.setenv("db_pool_size", "7")  # names are case-insensitive
    monkeypatch.setenv("DB_POOL_PRE_PING", "false")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("REDIS_KEY_PREFIX", "staging:")

    settings = load_settings()

    assert settings.db_pool_size == 7
    assert settings.db_pool_pre_ping is False
    assert settings.log_level == "DEBUG"
    assert settings.redis_key_prefix == "staging:"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().startswith("postgresql+asyncpg://")


def test_settings_are_read_from_a_dotenv_file_and_env_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgres://bot:envfilepw@db.example/chat\n"
        "REDIS_URL=rediss://:envfilepw@cache.example:6380/2\n"
        "DB_POOL_SIZE=3\n"
        "CONTEXT_MESSAGES=12\n"
        "SOMETHING_ELSE=ignored\n"
    )
    monkeypatch.setenv("CONTEXT_MESSAGES", "30")

    settings = load_settings()

    assert settings.db_pool_size == 3
    assert settings.context_messages == 30
    assert settings.database_url is not None and settings.redis_url is not None
    assert (
        settings.database_url.get_secret_value()
        == "postgresql+asyncpg://bot:envfilepw@db.example/chat"
    )
    assert settings.redis_url.get_secret_value() == "rediss://:envfilepw@cache.example:6380/2"


def test_invalid_value_in_dotenv_file_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("DB_POOL_SIZE=abc\nDATABASE_URL=mysql://u:s3cretpw@h/db\n")

    message = config_error(monkeypatch)

    assert "DB_POOL_SIZE" in message and "DATABASE_URL" in message
    assert "s3cretpw" not in message


def test_secret_urls_are_masked_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:s3cretpw@h/db")

    settings = load_settings()

    assert "s3cretpw" not in repr(settings) and "s3cretpw" not in str(settings)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://bot:s3cretpw@db:5432/chat", "postgresql://bot:***@db:5432/chat"),
        ("redis://:s3cretpw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:s3cretpw@cache/1", "rediss://default:***@cache/1"),
        ("postgresql://bot:s3cretpw@[::1]:5432/chat", "postgresql://bot:***@[::1]:5432/chat"),
        ("postgresql://bot:s3cr%40tpw@db/chat", "postgresql://bot:***@db/chat"),
        (
            "postgresql://bot@db/chat?password=s3cretpw&sslmode=require",
            "postgresql://bot@db/chat?password=***&sslmode=require",
        ),
        ("postgresql://bot@db:5432/chat", "postgresql://bot@db:5432/chat"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_redact_url_masks_passwords(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_redact_url_of_an_unparseable_url_shows_nothing() -> None:
    assert "s3cretpw" not in redact_url("postgresql://u:s3cretpw@[::1/db")


def test_secrets_returns_the_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://bot:dbs3cret@db/chat")
    monkeypatch.setenv("REDIS_URL", "rediss://:redis%40s3cret@cache:6380/0")

    secrets = load_settings().secrets()

    assert "dbs3cret" in secrets
    # Both the form written in the URL and the decoded one a library may print.
    assert "redis%40s3cret" in secrets and "redis@s3cret" in secrets


def test_secrets_include_a_password_given_as_query_parameter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot@db/chat?password=qs3cret")

    assert load_settings().secrets() == ["qs3cret"]


def test_no_secrets_without_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot@db/chat")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")

    assert load_settings().secrets() == []


def test_lock_and_claim_lifetimes_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    # Short: the holder renews it, so only a crashed worker's lock ever runs out.
    assert defaults.lock_ttl_seconds == 30 and defaults.lock_wait_seconds == 60
    assert defaults.dedup_processing_seconds == 300
    assert defaults.migration_lock_wait_seconds == 600

    monkeypatch.setenv("LOCK_TTL_SECONDS", "5")
    monkeypatch.setenv("LLM_RETRY_DEADLINE_SECONDS", "300")  # longer than the lock: fine
    monkeypatch.setenv("DEDUP_PROCESSING_SECONDS", "60")
    monkeypatch.setenv("MIGRATION_LOCK_WAIT_SECONDS", "2.5")
    settings = load_settings()
    assert settings.lock_ttl_seconds == 5 and settings.dedup_processing_seconds == 60
    assert settings.migration_lock_wait_seconds == 2.5
    assert "DEDUP_PROCESSING_SECONDS" in config_error(monkeypatch, DEDUP_PROCESSING_SECONDS="0")


def test_dotenv_file_that_is_not_utf8_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_bytes(b"LOG_LEVEL=DEBUG\nSYSTEM_PROMPT=caf\xe9\n")

    message = config_error(monkeypatch)

    assert message == "cannot read .env: line 2 is not valid UTF-8; save the file as UTF-8"


def test_unreadable_dotenv_file_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A file that exists but fails to read (permissions do not stop root, the tests' user).
    (tmp_path / ".env").symlink_to("/proc/self/mem")

    assert config_error(monkeypatch) == "cannot read .env: Input/output error"


def test_channel_and_llm_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_SHARD_IDS", "0, 2")
    monkeypatch.setenv("ALLOWED_MODELS", "gpt-4o-mini, llama3")
    settings = load_settings()
    assert settings.discord_shard_ids == [0, 2]
    assert settings.allowed_models == ["gpt-4o-mini", "llama3"]


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_APP_TOKEN", "")
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "")
    settings = Settings(_env_file=None)
    assert settings.slack_app_token is None and settings.database_url is None
    assert settings.rate_limit_per_minute == 60


def test_database_read_url_is_checked_like_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, DATABASE_READ_URL="mysql://u:s3cretpw@h/db")

    assert message.startswith("invalid setting DATABASE_READ_URL:") and "\n" not in message
    assert "s3cretpw" not in message
    monkeypatch.setenv("DATABASE_READ_URL", "postgres://ops:s3cretpw@r1:5432,r2:5432/chat")
    settings = load_settings(_env_file=None)
    assert settings.database_read_url is not None
    assert settings.database_read_url.get_secret_value() == (
        "postgresql+asyncpg://ops:s3cretpw@/chat?host=r1:5432&host=r2:5432"
    )
    assert "s3cretpw" in settings.secrets()  # masked wherever it would appear
    assert settings.replica_lag_warning_seconds == 30.0


def test_misspelt_settings_are_told_and_others_variables_left_alone(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("telegram_token=1:x\nPOSTGRES_PASSWORD=compose\n")
    environ = {
        "databse_url": "x",  # any case, as settings are read
        "database_url": "x",  # a setting
        "REDIS_URL_OLD": "x",  # another program's, built on a setting's name
        "TEST_REDIS_URL": "x",
        "HTTP_PROXY": "x",  # 0.74 like HTTP_PORT: not ours
        "TEMPERATURE": "0.3",
    }

    assert misspelt_settings(environ, tmp_path / ".env") == [
        "databse_url is not a setting and is ignored; did you mean DATABASE_URL?",
        "TEMPERATURE is not a setting and is ignored; did you mean LLM_TEMPERATURE?",
        f"telegram_token in {tmp_path / '.env'} is not a setting and is ignored; "
        "did you mean TELEGRAM_BOT_TOKEN?",
    ]
    assert misspelt_settings({}, tmp_path / "no.env") == []


def test_data_dir_is_the_per_user_one_unless_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    assert load_settings().data_dir == tmp_path / "share" / "chatbot-backend"

    monkeypatch.setenv("DATA_DIR", "elsewhere")
    assert load_settings().data_dir == Path("elsewhere")


def test_the_http_endpoints_listen_on_loopback_unless_told() -> None:
    """A workstation's /metrics is nobody else's business; the image sets 0.0.0.0."""
    assert Settings(_env_file=None).http_host == "127.0.0.1"
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    assert "HTTP_HOST=0.0.0.0" in dockerfile
