"""The keys of a `channel_configs` row that `bot ops config set` accepts, and their checks.

`default_model` is the row's column; the others live in its `settings` JSONB, where
the service (rate limit) and the responder (system prompt, temperature, max tokens)
read them. An empty value (`key=`) removes the key: the global setting applies again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.config import Settings
from bot.errors import BadInput

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}$")  # as /model accepts
MAX_PROMPT_CHARS = 8000


@dataclass(frozen=True, slots=True)
class ConfigKey:
    kind: type  # str, int or float
    help: str
    fallback: str  # the setting that applies when the channel does not set the key
    low: float | None = None
    high: float | None = None


CONFIG_KEYS: dict[str, ConfigKey] = {
    "default_model": ConfigKey(str, "model for users without a /model choice", "DEFAULT_MODEL"),
    "rate_limit_per_minute": ConfigKey(
        int, "messages a user may send a minute", "RATE_LIMIT_PER_MINUTE", 1, 100_000
    ),
    "system_prompt": ConfigKey(str, "system prompt sent to the LLM", "SYSTEM_PROMPT"),
    "temperature": ConfigKey(float, "LLM sampling temperature", "LLM_TEMPERATURE", 0, 2),
    "max_tokens": ConfigKey(int, "most tokens of one reply", "LLM_MAX_TOKENS", 1, 1_000_000),
}


def valid_keys() -> str:
    return ", ".join(sorted(CONFIG_KEYS))


def parse_assignments(pairs: Sequence[str], settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """`key=value` arguments as (values to set, keys to remove); BadInput on any error."""
    if not pairs:
        raise BadInput(f"give at least one key=value; valid keys: {valid_keys()}")
    values: dict[str, Any] = {}
    removed: list[str] = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep:
            raise BadInput(f"{pair!r} is not key=value; valid keys: {valid_keys()}")
        if key not in CONFIG_KEYS:
            raise BadInput(f"unknown key {key!r}; valid keys: {valid_keys()}")
        if key in values or key in removed:
            raise BadInput(f"{key} is given twice")
        if raw.strip() == "":
            removed.append(key)
        else:
            values[key] = parse_value(key, raw, settings)
    return values, removed


def parse_value(key: str, raw: str, settings: Settings) -> Any:
    spec = CONFIG_KEYS[key]
    if spec.kind is str:
        return _text(key, raw, settings)
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


def _text(key: str, raw: str, settings: Settings) -> str:
    if "\x00" in raw:
        raise BadInput(f"{key} must not contain NUL characters")
    if key == "default_model":
        model = raw.strip()
        if not _MODEL_NAME.match(model):
            raise BadInput(
                f"{model!r} is not a model name (letters, digits and . _ : / @ + -, at most 100)"
            )
        if settings.allowed_models and model not in settings.allowed_models:
            raise BadInput(
                f"model {model} is not in ALLOWED_MODELS: {', '.join(settings.allowed_models)}"
            )
        return model
    if len(raw) > MAX_PROMPT_CHARS:
        raise BadInput(f"{key} is at most {MAX_PROMPT_CHARS} characters, not {len(raw)}")
    return raw


def effective(settings: Settings, default_model: str | None, row: dict[str, Any]) -> list[Any]:
    """(key, value, source) for every key: the channel's value, else the global setting."""
    fallback: dict[str, Any] = {
        "default_model": settings.default_model,
        "rate_limit_per_minute": settings.rate_limit_per_minute,
        "system_prompt": settings.system_prompt,
        "temperature": settings.llm_temperature,
        "max_tokens": settings.llm_max_tokens,
    }
    own = {**row, "default_model": default_model} if default_model else dict(row)
    lines = []
    for key, spec in CONFIG_KEYS.items():
        if key in own:
            lines.append((key, own[key], "channel"))
        else:
            lines.append((key, fallback[key], spec.fallback))
    extra = sorted(set(own) - set(CONFIG_KEYS))
    lines += [(key, own[key], "channel (not a known key)") for key in extra]
    return lines
