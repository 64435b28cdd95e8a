"""The keys of a `channel_configs` row (`bot ops config set`) and of a `chat_configs` row
(`bot ops chat set`, and `/config` in a chat), and their checks.

`default_model` is the row's column; the others live in its `settings` JSONB, where
the service (rate limit, conversation mode, muted) and the responder (system prompt,
temperature, max tokens) read them. An empty value (`key=`) removes the key: the
layer below applies again (a thread's chat, a chat's platform, the global setting).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.errors import BadInput

if TYPE_CHECKING:
    from bot.config import Settings

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}$")  # as /model accepts
MAX_PROMPT_CHARS = 8000


@dataclass(frozen=True, slots=True)
class ConfigKey:
    kind: type  # str, int, float or bool
    help: str
    fallback: str  # the setting that applies when the channel does not set the key
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()  # for a str: the values it may take


CONFIG_KEYS: dict[str, ConfigKey] = {
    "default_model": ConfigKey(str, "model for users without a /model choice", "DEFAULT_MODEL"),
    "rate_limit_per_minute": ConfigKey(
        int, "messages a user may send a minute", "RATE_LIMIT_PER_MINUTE", 1, 100_000
    ),
    "system_prompt": ConfigKey(str, "system prompt sent to the LLM", "SYSTEM_PROMPT"),
    "temperature": ConfigKey(float, "LLM sampling temperature", "LLM_TEMPERATURE", 0, 2),
    "max_tokens": ConfigKey(int, "most tokens of one reply", "LLM_MAX_TOKENS", 1, 1_000_000),
    **{
        f"quota_{holder}_{period}_tokens": ConfigKey(
            int,
            f"tokens {whom} may spend a UTC {period} (0: no limit)",
            f"QUOTA_{holder.upper()}_{period.upper()}_TOKENS",
            0,
            10**12,
        )
        for holder, whom in (("user", "a user"), ("chat", "a group chat"))
        for period in ("day", "month")
    },
}
QUOTA_KEYS = tuple(key for key in CONFIG_KEYS if key.startswith("quota_"))
# A chat's row takes these too (bot/chat_configs.py).
CHAT_KEYS: dict[str, ConfigKey] = {
    **CONFIG_KEYS,
    "conversation_mode": ConfigKey(
        str,
        "per_user: each member talks in a conversation of their own; shared: everyone in one",
        "the platform's default",
        choices=("per_user", "shared"),
    ),
    "muted": ConfigKey(bool, "true: the bot ignores every message in the chat", "false"),
}
# What a chat's admins may change with /config: not its quotas, which are the operator's.
ADMIN_KEYS = {key: spec for key, spec in CHAT_KEYS.items() if key not in QUOTA_KEYS}
_TRUE, _FALSE = {"true", "on", "yes", "1"}, {"false", "off", "no", "0"}


def valid_keys(keys: dict[str, ConfigKey] = CONFIG_KEYS) -> str:
    return ", ".join(sorted(keys))


def parse_assignments(
    pairs: Sequence[str],
    allowed_models: Sequence[str],
    keys: dict[str, ConfigKey] = CONFIG_KEYS,
) -> tuple[dict[str, Any], list[str]]:
    """`key=value` arguments as (values to set, keys to remove); BadInput on any error."""
    if not pairs:
        raise BadInput(f"give at least one key=value; valid keys: {valid_keys(keys)}")
    values: dict[str, Any] = {}
    removed: list[str] = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep:
            raise BadInput(f"{pair!r} is not key=value; valid keys: {valid_keys(keys)}")
        if key not in keys:
            raise BadInput(f"unknown key {key!r}; valid keys: {valid_keys(keys)}")
        if key in values or key in removed:
            raise BadInput(f"{key} is given twice")
        if raw.strip() == "":
            removed.append(key)
        else:
            values[key] = parse_value(key, raw, allowed_models, keys[key])
    return values, removed


def parse_value(
    key: str, raw: str, allowed_models: Sequence[str], spec: ConfigKey | None = None
) -> Any:
    spec = spec or CONFIG_KEYS[key]
    if spec.choices:
        if raw.strip() not in spec.choices:
            raise BadInput(f"{key} is one of {', '.join(spec.choices)}, not {raw!r}")
        return raw.strip()
    if spec.kind is bool:
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise BadInput(f"{key} is true or false (also on/off, yes/no, 1/0), not {raw!r}")
        return word in _TRUE
    if spec.kind is str:
        return _text(key, raw, allowed_models)
    try:
        number: float = int(raw) if spec.kind is int else float(raw)
    except ValueError:
        kind = "a whole number" if spec.kind is int else "a number"
        raise BadInput(f"{key} must be {kind}, not {raw!r}") from None
    too_low = spec.low is not None and number < spec.low
    too_high = spec.high is not None and number > spec.high
    if not math.isfinite(number) or too_low or too_high:
        raise BadInput(f"{key} must be from {spec.low:g} to {spec.high:g}, not {raw!r}")
    return number


def _text(key: str, raw: str, allowed_models: Sequence[str]) -> str:
    if "\x00" in raw:
        raise BadInput(f"{key} must not contain NUL characters")
    if key == "default_model":
        model = raw.strip()
        if not _MODEL_NAME.match(model):
            raise BadInput(
                f"{model!r} is not a model name (letters, digits and . _ : / @ + -, at most 100)"
            )
        if allowed_models and model not in allowed_models:
            raise BadInput(f"model {model} is not in ALLOWED_MODELS: {', '.join(allowed_models)}")
        return model
    if len(raw) > MAX_PROMPT_CHARS:
        raise BadInput(f"{key} is at most {MAX_PROMPT_CHARS} characters, not {len(raw)}")
    return raw


Layer = tuple[str, str | None, dict[str, Any]]  # (its name, default_model, settings)


def effective(settings: Settings, default_model: str | None, row: dict[str, Any]) -> list[Any]:
    """(key, value, source) for every key: the channel's value, else the global setting."""
    return layered(settings, [("channel", default_model, row)], CONFIG_KEYS)


def layered(
    settings: Settings, layers: Sequence[Layer], keys: dict[str, ConfigKey]
) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every key: the first layer that sets it (a thread's, a
    chat's, the platform's …), else the global setting."""
    fallback: dict[str, Any] = {
        "default_model": settings.default_model,
        "rate_limit_per_minute": settings.rate_limit_per_minute,
        "system_prompt": settings.system_prompt,
        "temperature": settings.llm_temperature,
        "max_tokens": settings.llm_max_tokens,
        **{key: getattr(settings, key) for key in QUOTA_KEYS},
    }
    owns = [(name, {**row, "default_model": model} if model else dict(row))
            for name, model, row in layers]  # fmt: skip
    lines: list[tuple[str, Any, str]] = []
    for key, spec in keys.items():
        source = next(((name, own[key]) for name, own in owns if key in own), None)
        lines.append(
            (key, source[1], source[0]) if source else (key, fallback.get(key), spec.fallback)
        )
    for name, own in owns:
        lines += [
            (key, own[key], f"{name} (not a known key)") for key in sorted(set(own) - set(keys))
        ]
    return lines
