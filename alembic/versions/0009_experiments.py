"""A/B model experiments (issue 18): experiments and each user's assigned variant.

- experiments(name): variants JSONB [{name, model, share}] (whole percentages summing
  to 100, fixed once created), scope 'global' or a channel name, created_at, and
  stopped_at (NULL while it runs). At most one running experiment per scope, by a
  partial unique index. A name is never reused: a stopped experiment keeps its report.
- experiment_assignments(experiment, user_id): the variant a user was assigned,
  written with the user's first exchange in it (ON CONFLICT DO NOTHING): it survives a
  Redis flush. Deleted with its experiment or its user.

Downgrade drops both tables.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = dict(server_default=sa.text("now()"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("variants", postgresql.JSONB(), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), **NOW),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_experiments"),
    )
    op.create_index(
        "uq_experiments_one_running_per_scope",
        "experiments",
        ["scope"],
        unique=True,
        postgresql_where=sa.text("stopped_at IS NULL"),
    )
    op.create_table(
        "experiment_assignments",
        sa.Column("experiment", sa.String(64), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("variant", sa.String(32), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), **NOW),
        sa.ForeignKeyConstraint(
            ["experiment"],
            ["experiments.name"],
            name="fk_experiment_assignments_experiment_experiments",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_experiment_assignments_user_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment", "user_id", name="pk_experiment_assignments"),
    )
    op.create_index("ix_experiment_assignments_user_id", "experiment_assignments", ["user_id"])


def downgrade() -> None:
    op.drop_table("experiment_assignments")
    op.drop_table("experiments")
