"""One audit chain per goal, sealed by checkpoints: no row that every transaction locks.

Until now every auditing transaction of every worker locked `audit_head`, the single chain's
head. Each entry now extends its goal's chain (entries of no goal: the system chain), whose
head row only that goal's transactions lock; `seq` orders the whole log and is assigned by the
database. The entries written before this revision stay one chain, named `global`, whose head
was `audit_head`'s row; they verify as they always did (an entry's `seq` within it is its
`chain_seq`).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

LEGACY_CHAIN = "global"


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "audit_chains",
        sa.Column("chain", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute(
        "INSERT INTO audit_chains (chain, seq, hash) "
        f"SELECT '{LEGACY_CHAIN}', seq, hash FROM audit_head WHERE id = 1 AND seq > 0"
    )
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("chain", sa.String(64), nullable=True))
        batch.add_column(sa.Column("chain_seq", sa.Integer(), nullable=True))
    op.execute(f"UPDATE audit_log SET chain = '{LEGACY_CHAIN}', chain_seq = seq")
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("chain", existing_type=sa.String(64), nullable=False)
        batch.alter_column("chain_seq", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_audit_log_chain_seq", ["chain", "chain_seq"])
    if op.get_bind().dialect.name == "postgresql":
        _number_from_the_database()
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("chains", sa.Integer(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("heads_digest", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("signature", sa.JSON(), nullable=True),
    )
    op.create_table(
        "audit_checkpoint_heads",
        sa.Column(
            "checkpoint_id",
            sa.Integer(),
            sa.ForeignKey("audit_checkpoints.id"),
            primary_key=True,
        ),
        sa.Column("chain", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def _number_from_the_database() -> None:
    """Give `audit_log.seq` a sequence that starts after the entries already written.

    SQLite numbers an INTEGER PRIMARY KEY itself; PostgreSQL needs a sequence as its default
    (0001 created the column without one only if SQLAlchemy chose not to make it SERIAL).
    """
    op.execute("CREATE SEQUENCE IF NOT EXISTS audit_log_seq_seq OWNED BY audit_log.seq")
    op.execute("ALTER TABLE audit_log ALTER COLUMN seq SET DEFAULT nextval('audit_log_seq_seq')")
    op.execute(
        "SELECT setval('audit_log_seq_seq', COALESCE((SELECT max(seq) FROM audit_log), 0) + 1, "
        "false)"
    )


def downgrade() -> None:
    """Revert this revision (only while every entry is still in the one legacy chain)."""
    op.drop_table("audit_checkpoint_heads")
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint("uq_audit_log_chain_seq", type_="unique")
        batch.drop_column("chain_seq")
        batch.drop_column("chain")
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute(
        f"INSERT INTO audit_head (id, seq, hash) SELECT 1, seq, hash FROM audit_chains "
        f"WHERE chain = '{LEGACY_CHAIN}'"
    )
    op.drop_table("audit_chains")
