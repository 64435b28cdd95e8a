"""Settings: one object, read from the environment and an optional `.env` file.

The URLs among them are parsed and checked by bot/urls.py.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import platformdirs
from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError
from bot.pricing import Price, parse_prices
from bot.urls import check_redis_url, normalize_database_url, url_passwords

ENV_FILE = ".env"
# How alike (difflib's ratio) a variable's name must be to a setting's to be taken for a
# misspelling of it: DATABSE_URL 0.96, TELEGRAM_TOKEN 0.88, TEMPERATURE 0.85, while
# HTTP_PROXY (0.74 to HTTP_PORT) and REDIS_PORT (0.74 to REDIS_URL) stay others'.
MISSPELT_SIMILARITY = 0.8
APP_NAME = "chatbot-backend"  # the name of the per-user data directory
Seconds = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


def default_data_dir() -> Path:
    """The platform's per-user data directory of the bot (DATA_DIR's default)."""
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


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
    # A streaming replica for the reads of `bot ops` (stats, search, export, conversation
    # show), never for the message path; unset: they read DATABASE_URL.
    database_read_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    # One place per user wherever `bot` runs from (~/.local/share/chatbot-backend on
    # Linux, XDG_DATA_HOME honoured): a relative default started a new, empty database
    # in every directory the bot was run from.
    data_dir: Path = Field(default_factory=default_data_dir)
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
    # "transaction": Postgres is behind a transaction pooler (PgBouncer pool_mode =
    # transaction): no start-up parameters it refuses, no named prepared statements, the
    # statement timeout set per transaction (docs/deployment.md, "PgBouncer").
    database_pooler: Literal["none", "transaction"] = "none"
    # `bot ops health` warns when the read replica's replay is this far behind.
    replica_lag_warning_seconds: Seconds = 30.0
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
    # Redis Sentinel: the sentinels (host:port, comma-separated) and the name of the
    # primary they watch. The client asks them where the primary is and follows a
    # failover; REDIS_URL then gives only the password, TLS options and database.
    redis_sentinels: Annotated[list[tuple[str, int]] | None, NoDecode] = None
    redis_sentinel_master: str | None = None
    # Redis Cluster: REDIS_URL names any node (and gives the password and TLS options);
    # the client discovers the others and follows resharding and failovers. More seed
    # nodes (host:port, comma-separated) let it start while that one is down.
    redis_cluster: bool = False
    redis_cluster_nodes: Annotated[list[tuple[str, int]] | None, NoDecode] = None

    # Hot state (DESIGN.md, "Redis keys").
    session_ttl_seconds: PositiveInt = 3600
    rate_limit_per_minute: PositiveInt = 60
    # Token quotas (bot/quotas.py): tokens a user, and a group chat, may spend a UTC day
    # and month; 0 is no limit. A channel's or chat's quota_* keys override them.
    quota_user_day_tokens: NonNegativeInt = 0
    quota_user_month_tokens: NonNegativeInt = 0
    quota_chat_day_tokens: NonNegativeInt = 0
    quota_chat_month_tokens: NonNegativeInt = 0
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
    # The inbox (bot/inbox.py): an event is held by its worker this long, renewed every
    # third of it while answered; a dead worker's events are answered by a sweep within
    # INBOX_LEASE_SECONDS + INBOX_SWEEP_SECONDS.
    inbox_lease_seconds: Seconds = 30.0
    inbox_sweep_seconds: Seconds = 2.0
    # How long a message whose reply failed for now (timeout, 5xx, refused connection) is
    # tried again, with backoff, before it gets the apology.
    responder_retry_seconds: Seconds = 300.0

    # Conversation.
    default_model: str = "gpt-4o-mini"
    max_message_chars: PositiveInt = 8000
    history_default: PositiveInt = 5

    # Feature flags and the management commands of `bot ops` (docs/ops_manage.md).
    flags_refresh_seconds: Seconds = 5.0  # safety net beside the pub/sub invalidation
    purge_batch_size: PositiveInt = 1000  # rows per transaction of `bot ops purge`
    cache_batch_size: PositiveInt = 500  # keys per SCAN/DEL and users per warm batch

    # Upkeep of messages by the worker (bot/retention.py): monthly partitions made this
    # many months ahead, and messages older than RETENTION_DAYS deleted (unset: kept).
    partitions_ahead: Annotated[int, Field(ge=1, le=24)] = 3
    retention_days: PositiveInt | None = None
    maintenance_interval_seconds: Seconds = 3600.0

    # Worker.
    # Loopback by default: a workstation shows its /metrics to nobody. Containers set
    # 0.0.0.0 (the Dockerfile does), so that the orchestrator reaches them.
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    shutdown_grace_seconds: Seconds = 30.0
    # Replies appear as the model writes them where the adapter can show that; false:
    # each reply is sent whole once written. Streams still running this long before
    # the grace period ends are cut off with a note, so they end inside it.
    stream_replies: bool = True
    stream_shutdown_margin_seconds: Seconds = 5.0
    # A reply left streaming by a worker that died (its booking not renewed for this
    # long) is ended by another worker with the interrupted note.
    stream_orphan_seconds: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # Largest request body a webhook (Telegram, Slack Events API) reads; larger: 413.
    webhook_max_body_bytes: PositiveInt = 1 << 20

    # Discord (discord.py).
    discord_bot_token: SecretStr | None = None
    discord_api_base_url: str | None = None  # e.g. an HTTP proxy in front of discord.com/api
    discord_gateway_url: str | None = None  # e.g. a gateway proxy; default: asked from the API
    discord_shard_count: PositiveInt | None = None
    discord_shard_ids: Annotated[list[int] | None, NoDecode] = None
    # A growing reply is edited at most this often (Discord: 5 edits per 5 s per channel).
    discord_stream_interval_seconds: Annotated[float, Field(ge=0.1, le=60)] = 1.2

    # Telegram (python-telegram-bot).
    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str = "https://api.telegram.org/bot"
    telegram_webhook_url: str | None = None  # set: webhook mode; unset: long polling
    telegram_webhook_listen: str = "0.0.0.0"
    telegram_webhook_port: Annotated[int, Field(ge=0, le=65535)] = 8443
    telegram_webhook_secret: SecretStr | None = None
    # A growing reply is updated at most this often per chat (Telegram: about one
    # message edit per second per chat).
    telegram_stream_interval_seconds: Annotated[float, Field(ge=0.1, le=60)] = 1.0

    # Slack (slack-bolt).
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None  # set: Socket Mode
    slack_signing_secret: SecretStr | None = None  # set (and no app token): HTTP Events API
    slack_api_base_url: str | None = None  # default: https://slack.com/api/
    slack_listen: str = "0.0.0.0"
    slack_port: Annotated[int, Field(ge=0, le=65535)] = 3000
    # A growing reply is appended to (or updated) at most this often: chat.appendStream
    # is Slack's tier 4 (100+ a minute per workspace), chat.update tier 3.
    slack_stream_interval_seconds: Annotated[float, Field(ge=0.1, le=60)] = 1.5
    # Replies end with Slack's feedback buttons (👍/👎), each click stored as a rating.
    slack_feedback_buttons: bool = True

    # The offline echo responder streams word by word, this long between two words.
    echo_stream_delay_seconds: Annotated[float, Field(ge=0, le=5)] = 0.02
    # LLM: any OpenAI-compatible chat-completions API; unset base URL: the echo responder.
    llm_base_url: str | None = None  # e.g. https://api.openai.com/v1, http://localhost:11434/v1
    llm_api_key: SecretStr | None = None
    llm_timeout_seconds: Seconds = 60.0  # one call
    llm_retry_deadline_seconds: Seconds = 90.0  # all tries of one reply, waits included
    # Tries of one reply while the connection is refused or the host name does not
    # resolve: a server not running or a wrong URL fails in about a second, not the
    # deadline (timeouts, 429 and 5xx keep the deadline).
    llm_connect_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    llm_max_concurrency: PositiveInt = 8  # calls in flight per worker
    llm_max_tokens: PositiveInt = 1024
    llm_temperature: Annotated[float, Field(ge=0, le=2)] | None = None  # unset: the API's
    llm_context_token_budget: PositiveInt = 4000  # prompt: system + context + message
    system_prompt: str = "You are a helpful assistant."
    allowed_models: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: any
    # Summaries of long conversations (bot/summaries.py, README "Conversation summaries"):
    # when a context reaches SUMMARY_AT_PERCENT of LLM_CONTEXT_TOKEN_BUDGET (or fills
    # CONTEXT_MESSAGES), its oldest part is summarised in the background, keeping the
    # newest messages that fill SUMMARY_KEEP_PERCENT of the budget. Off by default: each
    # summary is one more LLM call, with the conversation's model unless SUMMARY_MODEL.
    summary_enabled: bool = False
    summary_at_percent: Annotated[int, Field(ge=10, le=100)] = 75
    summary_keep_percent: Annotated[int, Field(ge=0, le=90)] = 40
    summary_max_tokens: Annotated[int, Field(ge=16, le=8192)] = 400  # a summary's length
    summary_max_tasks: Annotated[int, Field(ge=1, le=64)] = 4  # summaries at once, per worker
    summary_model: str | None = None  # unset: the conversation's own
    summary_prompt: str = (
        "Summarise the conversation below for the assistant that continues it: the facts, "
        "names, decisions, questions still open and the user's preferences, briefly, in "
        "the conversation's language. Continue the summary so far, if one is given. "
        "Write only the summary."
    )
    # Prices per million prompt/completion tokens by model, over bot/pricing.py's
    # defaults, for the cost `bot ops usage` reports: `gpt-4o=2.5/10,local=0/0`.
    llm_prices: Annotated[dict[str, Price], NoDecode] = Field(default_factory=dict)
    # Moderation through the API's POST /moderations: of the user's message (input), the
    # reply (output), both, or off. When the check fails: let the text pass (open) or
    # tell the user it cannot be checked now (closed).
    moderation: Literal["off", "input", "output", "both"] = "off"
    moderation_fail: Literal["open", "closed"] = "open"
    moderation_model: str = "omni-moderation-latest"
    moderation_timeout_seconds: Seconds = 5.0  # one check, all its tries included

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _shard_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [int(part) for part in value.replace(" ", "").split(",") if part] or None
        return value

    @field_validator("redis_sentinels", "redis_cluster_nodes", mode="before")
    @classmethod
    def _host_ports(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        found = []
        for part in (p.strip() for p in value.split(",")):
            host, _, port = part.rpartition(":")
            if not part:
                continue
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{part!r} is not host:port, e.g. 10.0.0.5:26379")
            found.append((host.strip("[]"), int(port)))
        return found or None

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _allowed_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("llm_prices", mode="before")
    @classmethod
    def _llm_prices(cls, value: Any) -> Any:
        return parse_prices(value) if isinstance(value, str) else value

    @field_validator("llm_base_url", mode="before")
    @classmethod
    def _llm_base_url(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        if urlsplit(str(value)).scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://, e.g. http://localhost:11434/v1")
        return str(value)

    @field_validator("database_url", "database_read_url", mode="before")
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

    @model_validator(mode="after")
    def _summary_shares(self) -> Settings:
        if self.summary_keep_percent >= self.summary_at_percent:
            raise ValueError(
                "SUMMARY_KEEP_PERCENT must be below SUMMARY_AT_PERCENT: what a summary "
                "keeps must be less than what starts one"
            )
        return self

    @model_validator(mode="after")
    def _sentinel_pair(self) -> Settings:
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError(
                "REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together: the sentinels, and "
                "the name of the primary they watch"
            )
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError(
                "REDIS_CLUSTER and REDIS_SENTINELS exclude each other: a cluster fails over "
                "by itself"
            )
        if self.moderation != "off" and self.llm_base_url is None:
            raise ValueError(
                f"MODERATION={self.moderation} needs LLM_BASE_URL: it is checked by the "
                "API's /moderations endpoint (the echo responder has none); set "
                "MODERATION=off or LLM_BASE_URL"
            )
        if self.redis_cluster_nodes and not self.redis_cluster:
            raise ValueError("REDIS_CLUSTER_NODES needs REDIS_CLUSTER=true")
        if self.redis_cluster and "{" in self.redis_key_prefix:
            raise ValueError(
                "REDIS_KEY_PREFIX must not hold '{' with REDIS_CLUSTER: a hash tag there "
                "would put every key of the deployment in one slot"
            )
        return self

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


def misspelt_settings(environ: Mapping[str, str], env_file: str | Path = ENV_FILE) -> list[str]:
    """One warning per variable, in the environment or in `env_file`, whose name is not a
    setting but close to one (DATABSE_URL): otherwise it is ignored without a word, and
    an embedded Postgres starts instead of the one meant."""
    warnings = [_misspelt(name, "") for name in environ]
    try:
        in_file = list(dotenv_values(env_file)) if Path(env_file).is_file() else []
    except (OSError, UnicodeDecodeError):  # load_settings has said so already
        in_file = []
    warnings += [_misspelt(name, f" in {env_file}") for name in in_file]
    return [warning for warning in warnings if warning]


def _misspelt(name: str, where: str) -> str:
    known = setting_names()
    upper = name.upper()
    if upper in known or _namespaced_copy(upper, known):
        return ""
    closest = difflib.get_close_matches(upper, known, n=1, cutoff=MISSPELT_SIMILARITY)
    if not closest:
        return ""
    return f"{name}{where} is not a setting and is ignored; did you mean {closest[0]}?"


def _namespaced_copy(name: str, known: Iterable[str]) -> bool:
    """Another program's variable built on one of ours (TEST_DATABASE_URL, REDIS_URL_OLD)."""
    return any(name.endswith(f"_{setting}") or name.startswith(f"{setting}_") for setting in known)


def setting_names() -> list[str]:
    """Every setting's environment variable."""
    return [name.upper() for name in Settings.model_fields]


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
