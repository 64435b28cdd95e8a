"""Settings: one object, read from the environment and an optional `.env` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError

_DATABASE_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}

Seconds = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def normalize_database_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+asyncpg://; return the asyncpg form."""
    scheme, sep, rest = url.partition("://")
    driver = _DATABASE_SCHEMES.get(scheme.lower())
    if not sep or driver is None:
        raise ValueError("must start with postgresql://, postgres:// or postgresql+asyncpg://")
    if not rest.strip("/"):
        raise ValueError("has no host or database")
    return f"{driver}://{rest}"


def check_redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError("must start with redis://, rediss:// or unix://")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(
            "database number after the host must be an integer, e.g. redis://host:6379/0"
        )
    return url


class Settings(BaseSettings):
    """Every knob of the bot; the environment variable is the field name in upper case."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Where the state lives. Unset URLs start embedded servers under DATA_DIR.
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    data_dir: Path = Path(".data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    # Postgres pool (reference design).
    db_pool_size: PositiveInt = 20
    db_max_overflow: Annotated[int, Field(ge=0)] = 10
    db_pool_pre_ping: bool = True
    db_pool_recycle_seconds: PositiveInt = 3600
    db_pool_timeout_seconds: Seconds = 10.0
    db_statement_timeout_ms: PositiveInt = 30_000
    db_command_timeout_seconds: Seconds = 10.0
    db_connect_timeout_seconds: Seconds = 5.0
    db_application_name: str = "chatbot"
    db_retry_attempts: PositiveInt = 5
    db_retry_deadline_seconds: Seconds = 15.0

    # Redis client.
    redis_max_connections: PositiveInt = 50
    redis_socket_timeout_seconds: Seconds = 5.0
    redis_socket_connect_timeout_seconds: Seconds = 2.0
    redis_health_check_interval_seconds: Annotated[int, Field(ge=0)] = 30
    redis_op_timeout_seconds: Seconds = 0.5
    redis_breaker_cooldown_seconds: Seconds = 5.0
    redis_key_prefix: str = ""

    # Hot state (DESIGN.md, "Redis keys").
    session_ttl_seconds: PositiveInt = 3600
    rate_limit_per_minute: PositiveInt = 60
    active_window_seconds: PositiveInt = 300
    context_messages: PositiveInt = 20
    context_ttl_seconds: PositiveInt = 7200
    channel_config_ttl_seconds: PositiveInt = 300
    dedup_ttl_seconds: PositiveInt = 86_400
    lock_ttl_seconds: PositiveInt = 120
    lock_wait_seconds: Seconds = 60.0

    # Conversation.
    default_model: str = "gpt-4o-mini"
    max_message_chars: PositiveInt = 8000
    history_default: PositiveInt = 5

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        return normalize_database_url(str(value))

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        return check_redis_url(str(value))

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def secrets(self) -> list[str]:
        """Every secret value, so log redaction can mask them wherever they appear."""
        found: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                password = urlsplit(secret).password if "://" in secret else secret
                if password:
                    found.append(password)
        return found


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation failure into one readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    # The input value is left out on purpose: it may be a password.
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message}")
    return "invalid setting " + "; ".join(problems)
