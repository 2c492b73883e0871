"""Each write's step run records the idempotency key its tool was called with.

The key was made again wherever it was needed (the list of writes in doubt, a settle's audit
entry, the call made again once settled), with the formula of the release reading it. A
release whose formula differs from the one that called the write named a key the other system
never saw, and called the write again under it: a second effect. From here the claim records
the key, and every reader takes the recorded one. Rows claimed before this revision have none:
which formula made their key depends on the release that claimed them (`step_calls`).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("step_runs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(64), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("step_runs") as batch:
        batch.drop_column("idempotency_key")
