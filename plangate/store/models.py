"""The store's tables. The broker moves work; these rows remember it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from schemas import utcnow
from schemas.goal_states import TERMINAL, GoalStatus

__all__ = ["TERMINAL_STATUSES", "GoalStatus"]  # re-exported: the store's callers know them here

# The states, their moves and the sets of them are declared once, in schemas/goal_states.py.
TERMINAL_STATUSES = TERMINAL


# A revision a reviewer wrote is planned by `edit:<reviewer>`.
EDIT_PREFIX = "edit:"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every database (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return stored times as aware datetimes in UTC."""
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every plangate table."""

    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class GoalRow(Base):
    """A goal and where it stands."""

    __tablename__ = "goals"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    trace_headers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reconciled: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the reconciler last sent its message again (migration 0011); apart from updated_at.
    resent_at: Mapped[datetime | None]
    # While a planner works on it (an LLM call can take a minute): a second delivery of the
    # goal is not planned again, and the reconciler waits this long before it resends.
    planning_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PlanRow(Base):
    """One revision of a goal's plan, exactly as proposed."""

    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("goal_id", "revision"),)

    plan_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    goal_id: Mapped[str] = mapped_column(ForeignKey("goals.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]]
    plan_hash: Mapped[str] = mapped_column(String(80))
    planner: Mapped[str] = mapped_column(String(200))  # or EDIT_PREFIX + a reviewer
    trace_headers: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # What an LLM planner spent on this revision (all its attempts); null for other planners.
    model: Mapped[str | None] = mapped_column(String(200))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DecisionRow(Base):
    """A decision on one plan revision; at most one by policy and one by a person."""

    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("plan_id", "stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.plan_id"), index=True)
    goal_id: Mapped[str] = mapped_column(String(64), index=True)
    stage: Mapped[str] = mapped_column(String(16))  # "policy" or "human"
    action: Mapped[str] = mapped_column(String(16))
    decided_by: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    policy_version: Mapped[str] = mapped_column(String(80))
    shadow_action: Mapped[str | None] = mapped_column(String(16))
    # A person's decision: the roles the authenticated reviewer held when deciding (the gate
    # checks them against the hold before it signs); None for the policy's own decisions.
    roles: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HoldRow(Base):
    """What a decision on a held revision needs, recorded by the gate when it held the plan.

    Every decision by a person is checked against this record, wherever it is made: the policy
    file of the deciding process plays no part, and editing the policy while plans are held
    changes nothing for them.
    """

    __tablename__ = "holds"

    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.plan_id"), primary_key=True)
    goal_id: Mapped[str] = mapped_column(String(64), index=True)
    rule: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    policy_version: Mapped[str] = mapped_column(String(80))
    # Every role a deciding reviewer must hold (empty: any authenticated reviewer).
    required_roles: Mapped[list[Any]] = mapped_column(JSON, default=list)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Distinct reviewers who must approve (M-of-N), and whether the submitter may be one.
    approvals_required: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    approver_not_submitter: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The gate's DSSE signature over what the hold asks (`approval_gate.holds.hold_payload`).
    seal: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class ReviewerApprovalRow(Base):
    """One reviewer's approval of one held revision, counted towards the hold's number.

    Keyed by revision and reviewer: the same person approving twice counts once, and an edit
    (a new revision) starts the count again.
    """

    __tablename__ = "reviewer_approvals"

    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.plan_id"), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(200), primary_key=True)
    plan_hash: Mapped[str] = mapped_column(String(80))
    roles: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # `plangate.reviewers.approval_proof` by the reviewer's token; None: recorded in-process.
    proof: Mapped[str | None] = mapped_column(String(64), default=None)


class ReviewSessionRow(Base):
    """A reviewer's web session: any replica of `serve` accepts it until it expires or ends."""

    __tablename__ = "review_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    # The hash of the token the reviewer logged in with: a token removed from the reviewers
    # file ends its sessions too.
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class ApprovalRow(Base):
    """A signed approval as issued by the gate."""

    __tablename__ = "approvals"

    approval_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.plan_id"), unique=True)
    goal_id: Mapped[str] = mapped_column(String(64), index=True)
    plan_hash: Mapped[str] = mapped_column(String(80))
    envelope: Mapped[dict[str, Any]]
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApprovalUseRow(Base):
    """An approval an executor has acted on; the primary key makes each approval single-use."""

    __tablename__ = "approval_uses"

    approval_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)


class StepRunRow(Base):
    """A step's claim, checkpoint and result; the primary key is the claim."""

    __tablename__ = "step_runs"

    plan_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    goal_id: Mapped[str] = mapped_column(String(64), index=True)
    tool: Mapped[str] = mapped_column(String(64))
    # running, succeeded, failed, skipped, unknown; pending: settled as not happened, to be called
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    lease_until: Mapped[datetime | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # The key a write's tool was called with, recorded by its claim (0015): every later reader
    # takes this one, never its own formula's. None for reads, and writes claimed before 0015.
    idempotency_key: Mapped[str | None] = mapped_column(String(64))


class PlanPreviewRow(Base):
    """A held revision's dry run: what its reads returned and what its writes would do."""

    __tablename__ = "plan_previews"

    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.plan_id"), primary_key=True)
    goal_id: Mapped[str] = mapped_column(String(64), index=True)
    plan_hash: Mapped[str] = mapped_column(String(80))
    # None until an executor has made it: the row itself is the gate's request, so an
    # executor dry-runs only what a rule asked for, whatever a message claims.
    steps: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ToolCatalogRow(Base):
    """A tool spec an executor offers; the planner plans with these."""

    __tablename__ = "tool_catalog"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OutboxRow(Base):
    """A message written in the same transaction as the effects that caused it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    routing_key: Mapped[str] = mapped_column(String(200))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(index=True)
    # A relay publishing the row holds it until then (it publishes with no transaction open).
    relay_until: Mapped[datetime | None]
    # A delayed retry: not published before then (migration 0009).
    not_before: Mapped[datetime | None]


class AuditRow(Base):
    """One entry of the append-only audit log; `hash` chains it to the entry before in its chain.

    `seq` orders the whole log (assigned by the database, with gaps where a transaction rolled
    back); `chain` and `chain_seq` place the entry in its own chain: one per goal, one for
    entries of no goal, and the single chain every entry written before 0013 belongs to.
    """

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("chain", "chain_seq", name="uq_audit_log_chain_seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(64))
    chain_seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[str] = mapped_column(String(40))
    goal_id: Mapped[str | None] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditChainRow(Base):
    """A chain's head: locked by each append to that chain only, so chains grow in parallel."""

    __tablename__ = "audit_chains"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpointRow(Base):
    """A seal over every chain's head at one moment, chained to the checkpoint before.

    Removing a whole chain (a goal's every entry and its head) leaves no broken link inside
    the chains; the checkpoints still name its head, so verification finds it gone.
    """

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[str] = mapped_column(String(40))
    chains: Mapped[int] = mapped_column(Integer)
    entries: Mapped[int] = mapped_column(Integer)
    heads_digest: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    # A DSSE envelope over the checkpoint's hash, when the writer holds the gate's key.
    signature: Mapped[dict[str, Any] | None]


class AuditCheckpointHeadRow(Base):
    """A chain's head as a checkpoint saw it: only the chains that moved since the one before."""

    __tablename__ = "audit_checkpoint_heads"

    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("audit_checkpoints.id"), primary_key=True)
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class StageProgressRow(Base):
    """The newest message (by when it was made) any worker of a stage has taken from its queue.

    A queue hands messages out in order: a goal whose last message is older than this, and
    that has not moved, lost it; one newer is most likely still queued behind a backlog.
    """

    __tablename__ = "stage_progress"

    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    taken_up_to: Mapped[datetime]
