"""A planner's lease on a goal, so a redelivery during a long LLM call is not planned twice.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("goals") as batch:
        batch.add_column(sa.Column("planning_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("goals") as batch:
        batch.drop_column("planning_until")
