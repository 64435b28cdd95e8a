"""The SQL of A/B model experiments: define, stop and list them (ops), the running ones
(each worker, in the background), and the per-variant figures of a report. The
assignments are written with the exchange (bot/store/conversations.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, TEXT
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.errors import ExperimentConflict, NotFound
from bot.experimentset import Experiment, Variant, variants_of
from bot.store.database import Database

_COLUMNS = "name, variants, scope, created_at, stopped_at"
_ALL = text(f"SELECT {_COLUMNS} FROM experiments ORDER BY created_at DESC, name")
_RUNNING = text(f"SELECT {_COLUMNS} FROM experiments WHERE stopped_at IS NULL ORDER BY name")
_ONE = text(f"SELECT {_COLUMNS} FROM experiments WHERE name = :name")
# Of two creations racing for a name or a scope, the unique keys let one in.
_CREATE = text(
    f"""
    INSERT INTO experiments (name, variants, scope)
    VALUES (:name, CAST(:variants AS jsonb), :scope)
    ON CONFLICT DO NOTHING
    RETURNING {_COLUMNS}
    """
)
_RUNNING_IN = text("SELECT name FROM experiments WHERE scope = :scope AND stopped_at IS NULL")
_STOP = text(
    f"""
    UPDATE experiments SET stopped_at = now()
    WHERE name = :name AND stopped_at IS NULL
    RETURNING {_COLUMNS}
    """
)
_ASSIGNED = text(
    """
    SELECT variant, count(*) AS users FROM experiment_assignments
    WHERE experiment = :name GROUP BY variant
    """
)

# Per variant: users assigned; of the replies its metadata names (since the experiment
# began: partitions before it are not searched), latency percentiles, those cut off,
# and their feedback; and its users' messages left without a reply (the responder
# failed for good: bot/service.py stores such a message alone).
_FIGURES = text(
    """
    WITH replies AS (
        SELECT r.id, r.metadata->>'variant' AS variant,
               (r.metadata->>'latency_ms')::float AS latency,
               r.metadata->>'status' = 'interrupted' AS interrupted
        FROM messages r
        WHERE r.role = 'assistant' AND r.timestamp >= :since
          AND r.metadata->>'experiment' = :name
    ), timed AS (
        SELECT variant, count(*) AS replies,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY latency) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY latency) AS p95,
               count(*) FILTER (WHERE interrupted) AS interrupted
        FROM replies GROUP BY variant
    ), rated AS (
        SELECT r.variant, count(*) FILTER (WHERE f.rating = 1) AS positive,
               count(*) FILTER (WHERE f.rating = -1) AS negative
        FROM replies r JOIN feedback f ON f.message_id = r.id GROUP BY r.variant
    ), unanswered AS (
        SELECT q.metadata->>'variant' AS variant, count(*) AS failed
        FROM messages q LEFT JOIN message_replies c ON c.reply_to = q.id
        WHERE q.role = 'user' AND q.timestamp >= :since
          AND q.metadata->>'experiment' = :name AND c.reply_to IS NULL
        GROUP BY 1
    ), assigned AS (
        SELECT variant, count(*) AS users FROM experiment_assignments
        WHERE experiment = :name GROUP BY variant
    )
    SELECT v.variant, coalesce(a.users, 0) AS users, coalesce(t.replies, 0) AS replies,
           t.p50, t.p95, coalesce(t.interrupted, 0) AS interrupted,
           coalesce(u.failed, 0) AS failed,
           coalesce(r.positive, 0) AS positive, coalesce(r.negative, 0) AS negative
    FROM unnest(:variants) AS v(variant)
    LEFT JOIN assigned a USING (variant)
    LEFT JOIN timed t USING (variant)
    LEFT JOIN rated r USING (variant)
    LEFT JOIN unanswered u USING (variant)
    """
).bindparams(bindparam("variants", type_=ARRAY(TEXT)))


@dataclass(frozen=True, slots=True)
class VariantFigures:
    """What a report says of one variant, beside its tokens and cost (bot/store/usage.py)."""

    variant: str
    users: int  # assigned
    replies: int
    p50: float | None  # ms, of the replies that carry their latency
    p95: float | None
    interrupted: int  # streamed replies cut off
    failed: int  # messages left without a reply
    positive: int
    negative: int


class ExperimentQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(self, name: str, variants: Sequence[Variant], scope: str) -> Experiment:
        """A new running experiment; ExperimentConflict if the name is taken (by a
        running or a stopped one) or another runs in its scope."""
        params = {
            "name": name,
            "variants": json.dumps([v.fields() for v in variants]),
            "scope": scope,
        }

        async def work(connection: AsyncConnection) -> Experiment | str:
            row = (await connection.execute(_CREATE, params)).first()
            if row is not None:
                return _experiment(row)
            if (await connection.execute(_ONE, params)).first() is not None:
                return (
                    f"experiment {name} exists already (names are not reused: a stopped "
                    "experiment keeps its report); choose another name"
                )
            running = (await connection.execute(_RUNNING_IN, params)).scalar_one_or_none()
            return f"experiment {running} is running for {scope}: stop it first"

        found = await self._database.transaction(work)
        if isinstance(found, str):
            raise ExperimentConflict(found)
        return found

    async def stop(self, name: str) -> Experiment:
        """Stop the experiment: its users go back to the usual model resolution."""

        async def work(connection: AsyncConnection) -> Experiment | None:
            row = (await connection.execute(_STOP, {"name": name})).first()
            return _experiment(row) if row is not None else None

        stopped = await self._database.transaction(work)
        if stopped is not None:
            return stopped
        existing = await self.get(name)
        if existing is None:
            raise NotFound(f"no experiment named {name}")
        raise ExperimentConflict(f"experiment {name} was stopped already, at {existing.stopped_at}")

    async def get(self, name: str) -> Experiment | None:
        async def work(connection: AsyncConnection) -> Experiment | None:
            row = (await connection.execute(_ONE, {"name": name})).first()
            return _experiment(row) if row is not None else None

        return await self._database.transaction(work)

    async def all(self) -> list[Experiment]:
        return await self._rows(_ALL)

    async def running(self) -> list[Experiment]:
        return await self._rows(_RUNNING)

    async def assigned(self, name: str) -> dict[str, int]:
        """Users assigned so far, by variant."""

        async def work(connection: AsyncConnection) -> dict[str, int]:
            rows = await connection.execute(_ASSIGNED, {"name": name})
            return {row.variant: int(row.users) for row in rows}

        return await self._database.transaction(work)

    async def figures(self, experiment: Experiment) -> list[VariantFigures]:
        """Per variant, in the experiment's order (bot ops experiment report)."""
        params = {
            "name": experiment.name,
            "since": experiment.created_at,
            "variants": [v.name for v in experiment.variants],
        }

        async def work(connection: AsyncConnection) -> list[VariantFigures]:
            rows = await connection.execute(_FIGURES, params)
            return [VariantFigures(**row._mapping) for row in rows]

        return await self._database.once(work)

    async def _rows(self, query: Any) -> list[Experiment]:
        async def work(connection: AsyncConnection) -> list[Experiment]:
            return [_experiment(row) for row in await connection.execute(query)]

        return await self._database.transaction(work)


def _experiment(row: Any) -> Experiment:
    variants = row.variants if not isinstance(row.variants, str) else json.loads(row.variants)
    return Experiment(row.name, variants_of(variants), row.scope, row.created_at, row.stopped_at)
