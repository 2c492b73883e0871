"""Keep each held revision's dry run (preview) beside the plan, for reviewers.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "plan_previews",
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("goal_id", sa.String(length=64), nullable=False),
        sa.Column("plan_hash", sa.String(length=80), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.plan_id"]),
        sa.PrimaryKeyConstraint("plan_id"),
    )
    op.create_index("ix_plan_previews_goal_id", "plan_previews", ["goal_id"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_plan_previews_goal_id", table_name="plan_previews")
    op.drop_table("plan_previews")
