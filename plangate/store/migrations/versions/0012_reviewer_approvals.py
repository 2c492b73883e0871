"""Four eyes: how many reviewers a hold needs, and each reviewer's approval counted.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("holds") as batch:
        batch.add_column(
            sa.Column("approvals_required", sa.Integer(), nullable=False, server_default="1")
        )
        batch.add_column(
            sa.Column(
                "approver_not_submitter", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
    op.create_table(
        "reviewer_approvals",
        sa.Column("plan_id", sa.String(64), sa.ForeignKey("plans.plan_id"), primary_key=True),
        sa.Column("reviewer", sa.String(200), primary_key=True),
        sa.Column("plan_hash", sa.String(80), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("reviewer_approvals")
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("approver_not_submitter")
        batch.drop_column("approvals_required")
