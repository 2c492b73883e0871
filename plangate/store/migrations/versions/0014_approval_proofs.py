"""Each reviewer's approval carries a proof of their token, and each hold the gate's seal.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("reviewer_approvals") as batch:
        batch.add_column(sa.Column("proof", sa.String(64), nullable=True))
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("seal", sa.JSON(), nullable=True))
    # Sessions kept the token's hash, which now keys a reviewer's approval proofs; the binding
    # stored instead cannot match them, so they end here, and the hashes leave the database.
    op.execute("DELETE FROM review_sessions")


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("seal")
    with op.batch_alter_table("reviewer_approvals") as batch:
        batch.drop_column("proof")
