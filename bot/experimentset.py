"""A/B model experiments as the service reads them: an experiment's variants, which
variant a user is in, and the experiments running at one moment (held in memory by
each worker: no round trip per message). Kept and changed by bot/experiments.py.

A user's variant is deterministic and sticky: a hash of the experiment's name and the
user's id, taken into the variants' cumulative shares. The variants of an experiment
are fixed once it is created and its name is never reused, so every worker, before
and after a Redis flush, puts a user in the same variant; the assignment stored in
Postgres with their first exchange records it.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bot.errors import ExperimentError

GLOBAL = "global"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
VARIANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
MODEL = re.compile(r"[A-Za-z0-9._:/@+-]{1,100}")  # as /model accepts (bot/commands)
BUCKETS = 100  # shares are whole percentages


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    model: str
    share: int  # percent of users

    def fields(self) -> dict[str, Any]:
        """As the experiments row keeps it (JSONB)."""
        return {"name": self.name, "model": self.model, "share": self.share}


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]
    scope: str  # 'global' or a channel name
    created_at: datetime | None = None
    stopped_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def variant_for(self, user_id: uuid.UUID) -> Variant:
        """The user's variant: the hash of (name, user id) into the cumulative shares."""
        digest = hashlib.sha256(f"{self.name}\x00{user_id}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") % BUCKETS
        reached = 0
        for variant in self.variants:
            reached += variant.share
            if bucket < reached:
                return variant
        return self.variants[-1]  # not reached: the shares sum to 100


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which variant of which experiment a user is in, and so the model they get."""

    experiment: str
    variant: str
    model: str
    user_id: uuid.UUID

    def metadata(self) -> dict[str, str]:
        """What messages.metadata carries of it."""
        return {"experiment": self.experiment, "variant": self.variant}


@dataclass(frozen=True, slots=True)
class ExperimentSet:
    """The experiments running at one moment: a channel's beats the global one."""

    global_: Experiment | None = None
    channels: dict[str, Experiment] = field(default_factory=dict)

    @classmethod
    def of(cls, running: Sequence[Experiment]) -> ExperimentSet:
        found = {e.scope: e for e in running if e.running}
        return cls(found.pop(GLOBAL, None), found)

    def for_channel(self, channel: str) -> Experiment | None:
        return self.channels.get(channel) or self.global_

    def assign(self, channel: str, user_id: uuid.UUID) -> Assignment | None:
        """The user's variant in the experiment running for the channel, if one is."""
        experiment = self.for_channel(channel)
        if experiment is None:
            return None
        variant = experiment.variant_for(user_id)
        return Assignment(experiment.name, variant.name, variant.model, user_id)


class ExperimentSource(Protocol):
    """What the service reads: the experiments running now, held in memory."""

    current: ExperimentSet


class StaticExperiments:
    """Experiments that never change (tests, tools): none, for a service built bare."""

    def __init__(self, experiments: ExperimentSet | None = None) -> None:
        self.current = experiments or ExperimentSet()


def parse_variant(text: str) -> Variant:
    """`a=gpt-4o:50` as a Variant; ExperimentError saying what is wrong."""
    name, equals, rest = text.partition("=")
    model, colon, share = rest.rpartition(":")
    if not equals or not colon or not share.strip().isdigit():
        raise ExperimentError(f"variant {text!r} is not NAME=MODEL:SHARE, e.g. a=gpt-4o:50")
    name, model = name.strip(), model.strip()
    if not VARIANT.fullmatch(name):
        raise ExperimentError(
            f"variant name {name!r}: letters, digits and . _ -, at most 32, starting with "
            "a letter or digit"
        )
    if not MODEL.fullmatch(model):
        raise ExperimentError(f"variant {name}: {model!r} is not a model name")
    return Variant(name, model, int(share))


def check_experiment(name: str, variants: Sequence[Variant], allowed_models: Sequence[str]) -> None:
    """ExperimentError, in one line, unless the experiment can be created as given."""
    if not NAME.fullmatch(name):
        raise ExperimentError(
            f"experiment name {name!r}: letters, digits and . _ -, at most 64, starting "
            "with a letter or digit"
        )
    if len(variants) < 2:
        raise ExperimentError("an experiment needs at least two variants (--variant, repeated)")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ExperimentError(f"variant names must differ: {', '.join(names)}")
    if any(v.share < 1 for v in variants) or sum(v.share for v in variants) != BUCKETS:
        shares = " + ".join(str(v.share) for v in variants)
        raise ExperimentError(
            f"shares are whole percentages of at least 1 summing to 100, not {shares}"
        )
    refused = [v.model for v in variants if allowed_models and v.model not in allowed_models]
    if refused:
        raise ExperimentError(
            f"model {refused[0]} is not in ALLOWED_MODELS ({', '.join(allowed_models)})"
        )


def variants_of(data: Any) -> tuple[Variant, ...]:
    """The variants as the experiments row keeps them."""
    return tuple(Variant(str(v["name"]), str(v["model"]), int(v["share"])) for v in data)
