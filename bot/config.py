"""Settings: one object, read from the environment and an optional `.env` file."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError

_DATABASE_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
# libpq's TLS parameters (docs/deployment.md). asyncpg takes the mode as `ssl`, and the
# certificate files only inside an SSLContext, which database_connect_args builds.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_CERTIFICATE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey", "sslpassword")
_CERTIFICATE_MODES = ("require", "verify-ca", "verify-full")
# redis-py reads these from a rediss:// URL's query itself.
REDIS_TLS_OPTIONS = (
    "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_cert_reqs", "ssl_check_hostname",
    "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_min_version", "ssl_ciphers",
    "ssl_include_verify_flags", "ssl_exclude_verify_flags",
)  # fmt: skip
_REDIS_CERT_REQS = ("none", "optional", "required")

ENV_FILE = ".env"
Seconds = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"  # not parseable, so not provably free of a password
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        # Keep the host exactly as written (an IPv6 host keeps its brackets).
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}")
    if "password=" in parts.query.lower():
        query = [
            (key, "***" if _is_password(key) else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*/"))
    return urlunsplit(parts)


def _is_password(query_key: str) -> bool:
    """password=, or a TLS key's passphrase: sslpassword= (libpq), ssl_password= (redis-py)."""
    return query_key.lower().endswith("password")


def url_passwords(url: str) -> list[str]:
    """The passwords a URL holds: in the user part and as a `password=` query parameter."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    for raw in parts.query.split("&"):
        key, _, value = raw.partition("=")
        if _is_password(unquote_plus(key)) and value:
            found.append(value)
    # Both the form written in the URL and the decoded one a library may print.
    return list(dict.fromkeys(found + [unquote_plus(v) for v in found]))


def _check_port(url: str) -> None:
    try:
        urlsplit(url).port  # noqa: B018 - parsing is the check
    except ValueError:
        raise ValueError("port after the host must be a number from 0 to 65535") from None


def normalize_database_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+asyncpg://; return the asyncpg form."""
    scheme, sep, rest = url.partition("://")
    driver = _DATABASE_SCHEMES.get(scheme.lower())
    if not sep or driver is None:
        raise ValueError("must start with postgresql://, postgres:// or postgresql+asyncpg://")
    if not rest.strip("/"):
        raise ValueError("has no host or database")
    _check_port(url)
    before, mark, query = rest.partition("?")
    return f"{driver}://{before}{mark}{_database_tls_query(query)}"


def _segments(query: str) -> list[tuple[str, str]]:
    """(decoded name, segment as written) of each `name=value` of a query."""
    return [(unquote_plus(seg.partition("=")[0]), seg) for seg in query.split("&") if seg]


def _database_tls_query(query: str) -> str:
    """The query with libpq's `sslmode=` as asyncpg's `ssl=`, the rest as written; TLS
    parameters asyncpg cannot honour are refused here, not by a TypeError later."""
    segments: list[str] = []
    mode: str | None = None
    found: set[str] = set()
    for name, segment in _segments(query):
        if name in ("ssl", "sslmode"):
            mode = unquote_plus(segment.partition("=")[2])
            if mode not in SSL_MODES:
                raise ValueError(f"{name} must be one of {', '.join(SSL_MODES)}")
            if found & {"ssl", "sslmode"}:
                raise ValueError("give sslmode or ssl, not both")
            segment = "ssl=" + segment.partition("=")[2]
        elif name.startswith("ssl") and name not in _CERTIFICATE_PARAMETERS:
            raise ValueError(
                f"{name} is not supported; the TLS parameters are sslmode, sslrootcert, "
                "sslcert, sslkey and sslpassword"
            )
        found.add(name)
        segments.append(segment)
    if found & set(_CERTIFICATE_PARAMETERS) and mode not in _CERTIFICATE_MODES:
        raise ValueError(
            "sslrootcert, sslcert and sslkey need sslmode=require, verify-ca or verify-full"
        )
    return "&".join(segments)


def database_connect_args(url: str) -> tuple[str, dict[str, Any]]:
    """The SQLAlchemy URL and extra asyncpg connect arguments of a DATABASE_URL: a mode
    alone stays in the URL (`ssl=require`); certificate files, which asyncpg has no
    keyword for, become one SSLContext in `ssl` (ConfigError if a file is unreadable)."""
    url = normalize_database_url(url)
    base, _, query = url.partition("?")
    values = {name: unquote_plus(seg.partition("=")[2]) for name, seg in _segments(query)}
    if not values.keys() & set(_CERTIFICATE_PARAMETERS):
        return url, {}
    kept = [seg for name, seg in _segments(query) if name not in ("ssl", *_CERTIFICATE_PARAMETERS)]
    return base + ("?" + "&".join(kept) if kept else ""), {"ssl": _ssl_context(values)}


def _ssl_context(values: dict[str, str]) -> ssl.SSLContext:
    """libpq's meaning: verify-full checks the CA and the host name, verify-ca the CA, and
    require only encrypts unless a root certificate is given (then it checks the CA)."""
    mode, rootcert = values["ssl"], values.get("sslrootcert")
    reading = "sslrootcert"
    try:
        context = ssl.create_default_context(cafile=rootcert)
        context.check_hostname = mode == "verify-full"
        if mode == "require" and rootcert is None:
            context.verify_mode = ssl.CERT_NONE
        if "sslcert" in values:
            reading = "sslcert"
            context.load_cert_chain(
                values["sslcert"], values.get("sslkey"), password=values.get("sslpassword")
            )
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        path = values.get(reading)
        raise ConfigError(f"DATABASE_URL: cannot read {reading} {path}: {reason}") from None
    return context


def asyncpg_dsn(url: str) -> str:
    """The DATABASE_URL as a DSN for asyncpg.connect (libpq's form: sslmode=, not ssl=)."""
    base, _, query = normalize_database_url(url).partition("?")
    segments = [
        "sslmode=" + seg.partition("=")[2] if name == "ssl" else seg
        for name, seg in _segments(query)
    ]
    base = base.replace("postgresql+asyncpg://", "postgresql://", 1)
    return base + ("?" + "&".join(segments) if segments else "")


def check_redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError("must start with redis://, rediss:// or unix://")
    _check_port(url)
    # A unix:// URL's path is the socket; its database number, like any, may be ?db=N.
    db = "" if parts.scheme == "unix" else parts.path.strip("/")
    numbers = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "db"]
    if (db and not db.isdigit()) or not all(n.isdigit() for n in numbers):
        raise ValueError(
            "database number after the host must be an integer, e.g. redis://host:6379/0"
        )
    _check_redis_tls(parts.scheme, parse_qsl(parts.query, keep_blank_values=True))
    return url


def _check_redis_tls(scheme: str, query: list[tuple[str, str]]) -> None:
    """redis-py passes unknown query options to its connection class: a typo would be a
    TypeError at the first command, and ssl_* on a plain URL is silently no TLS."""
    for name, value in query:
        if not name.startswith("ssl"):
            continue
        if name not in REDIS_TLS_OPTIONS:
            raise ValueError(
                f"{name} is not a TLS option of redis-py ({', '.join(REDIS_TLS_OPTIONS)})"
            )
        if scheme != "rediss":
            raise ValueError(f"{name} needs a rediss:// URL: redis:// never uses TLS")
        if name == "ssl_cert_reqs" and value not in _REDIS_CERT_REQS:
            raise ValueError("ssl_cert_reqs must be none, optional or required")


class Settings(BaseSettings):
    """Every knob of the bot; the environment variable is the field name in upper case."""

    # An empty variable (SLACK_APP_TOKEN= in a templated .env) counts as unset.
    model_config = SettingsConfigDict(
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
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
    # Ping only connections idle this long: a busy pool pays no ping per message, and a
    # connection that died in between fails as a disconnect the retry policy cures.
    db_pool_ping_idle_seconds: Annotated[float, Field(ge=0)] = 10.0
    db_pool_recycle_seconds: PositiveInt = 3600
    db_pool_timeout_seconds: Seconds = 10.0
    db_statement_timeout_ms: PositiveInt = 30_000
    db_command_timeout_seconds: Seconds = 10.0
    db_connect_timeout_seconds: Seconds = 5.0
    db_application_name: str = "chatbot"
    db_retry_attempts: PositiveInt = 10  # with the backoff, about 9 s: a server restart
    db_retry_deadline_seconds: Seconds = 15.0
    # How long start-up waits for another worker's migration (under the advisory lock).
    migration_lock_wait_seconds: Seconds = 600.0
    # false: `bot run` and `bot chat` only check the schema is current, for a runtime role
    # that may not change it (docs/deployment.md); `bot migrate` runs as another role.
    migrate_on_start: bool = True

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
    # A claim on an event being handled; only a crashed worker's claim ever expires by it.
    dedup_processing_seconds: PositiveInt = 300
    # The holder renews its user's lock every third of this while it works, so a crashed
    # worker's lock frees within it however long a reply takes.
    lock_ttl_seconds: PositiveInt = 30
    lock_wait_seconds: Seconds = 60.0
    # How long a redelivery waits for a reply being sent by another worker (its event
    # 'answered', not yet 'done') before taking it for lost and sending the stored reply.
    delivery_lease_seconds: PositiveInt = 30

    # Conversation.
    default_model: str = "gpt-4o-mini"
    max_message_chars: PositiveInt = 8000
    history_default: PositiveInt = 5

    # Feature flags and the management commands of `bot ops` (docs/ops_manage.md).
    flags_refresh_seconds: Seconds = 5.0  # safety net beside the pub/sub invalidation
    purge_batch_size: PositiveInt = 1000  # rows per transaction of `bot ops purge`
    cache_batch_size: PositiveInt = 500  # keys per SCAN/DEL and users per warm batch

    # Worker.
    http_host: str = "0.0.0.0"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    shutdown_grace_seconds: Seconds = 30.0
    # Largest request body a webhook (Telegram, Slack Events API) reads; larger: 413.
    webhook_max_body_bytes: PositiveInt = 1 << 20

    # Discord (discord.py).
    discord_bot_token: SecretStr | None = None
    discord_api_base_url: str | None = None  # e.g. an HTTP proxy in front of discord.com/api
    discord_gateway_url: str | None = None  # e.g. a gateway proxy; default: asked from the API
    discord_shard_count: PositiveInt | None = None
    discord_shard_ids: Annotated[list[int] | None, NoDecode] = None

    # Telegram (python-telegram-bot).
    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str = "https://api.telegram.org/bot"
    telegram_webhook_url: str | None = None  # set: webhook mode; unset: long polling
    telegram_webhook_listen: str = "0.0.0.0"
    telegram_webhook_port: Annotated[int, Field(ge=0, le=65535)] = 8443
    telegram_webhook_secret: SecretStr | None = None

    # Slack (slack-bolt).
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None  # set: Socket Mode
    slack_signing_secret: SecretStr | None = None  # set (and no app token): HTTP Events API
    slack_api_base_url: str | None = None  # default: https://slack.com/api/
    slack_listen: str = "0.0.0.0"
    slack_port: Annotated[int, Field(ge=0, le=65535)] = 3000

    # LLM: any OpenAI-compatible chat-completions API; unset base URL: the echo responder.
    llm_base_url: str | None = None  # e.g. https://api.openai.com/v1, http://localhost:11434/v1
    llm_api_key: SecretStr | None = None
    llm_timeout_seconds: Seconds = 60.0  # one call
    llm_retry_deadline_seconds: Seconds = 90.0  # all tries of one reply, waits included
    llm_max_concurrency: PositiveInt = 8  # calls in flight per worker
    llm_max_tokens: PositiveInt = 1024
    llm_temperature: Annotated[float, Field(ge=0, le=2)] | None = None  # unset: the API's
    llm_context_token_budget: PositiveInt = 4000  # prompt: system + context + message
    system_prompt: str = "You are a helpful assistant."
    allowed_models: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: any

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _shard_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [int(part) for part in value.replace(" ", "").split(",") if part] or None
        return value

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _allowed_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("llm_base_url", mode="before")
    @classmethod
    def _llm_base_url(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        if urlsplit(str(value)).scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://, e.g. http://localhost:11434/v1")
        return str(value)

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
                if "://" in secret:
                    found += url_passwords(secret)
                elif secret:
                    found.append(secret)
        return found


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation failure into one readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"cannot read {_env_file(overrides)}: line {line} is not valid UTF-8; "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {_env_file(overrides)}: {exc.strerror or exc}") from None


def _env_file(overrides: dict[str, Any]) -> str:
    return str(overrides.get("_env_file") or ENV_FILE)


def describe_validation_error(exc: ValidationError) -> str:
    # The input value is left out on purpose: it may be a password.
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if name else message)
    return "invalid setting " + "; ".join(problems)
