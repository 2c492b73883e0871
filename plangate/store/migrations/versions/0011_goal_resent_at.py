"""When the reconciler last sent a goal's message again: the reconciler's time to compare against.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("goals") as batch:
        batch.add_column(sa.Column("resent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("goals") as batch:
        batch.drop_column("resent_at")
