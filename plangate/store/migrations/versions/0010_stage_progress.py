"""How far each stage has got through its queue: the reconciler tells lost from queued.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "stage_progress",
        sa.Column("stage", sa.String(16), primary_key=True),
        sa.Column("taken_up_to", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("stage_progress")
