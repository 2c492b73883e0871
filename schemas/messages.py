"""Every message that crosses a stage boundary. Where each type goes is `schemas.routing`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from schemas.identifiers import Identifier
from schemas.plan import Plan

SCHEMA_VERSION: Literal[1] = 1
MAX_SIGNATURES = 8
# What a person writes beside a decision or a move (a comment, a reason), however it arrives.
MAX_COMMENT_CHARS = 2000

# What a submitter keeps with a goal: labels to find it by, not a payload. (A CloudEvent's
# source, id and type are kept as three of them.)
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=100)],
        Annotated[str, StringConstraints(max_length=2000)],
    ],
    Field(max_length=64),
]
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

Action = Literal["approve", "deny", "hold"]
# `pending`: not run yet, waiting on a step that may or may not have happened (`unknown`).
StepStatus = Literal["succeeded", "failed", "skipped", "unknown", "pending"]


def new_id() -> str:
    """Return a new random identifier (32 hex characters)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Fields every message carries: its version, its own id, the goal it belongs to, when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: Identifier = Field(default_factory=new_id)
    goal_id: Identifier
    # RFC 3339 with its offset, as the contract says: a naive time is no instant.
    occurred_at: AwareDatetime = Field(default_factory=utcnow)


GOAL_TEXT_MAX = 10_000  # characters of a goal's text


class GoalSubmitted(Message):
    """A goal, written by a person or a service: untrusted text to plan for."""

    type: Literal["goal.submitted"] = "goal.submitted"
    text: str = Field(min_length=1, max_length=GOAL_TEXT_MAX)
    metadata: Metadata = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=200, pattern=r"\S")


MAX_TOKENS = 10**12  # a count of tokens past any model's: a server's nonsense


class TokenUsage(BaseModel):
    """LLM tokens spent on something (a call, a plan revision, a goal)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Bounded: a server's 10**30 could not be stored, and the goal stayed `submitted` for ever.
    input_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)

    @property
    def total(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=min(self.input_tokens + other.input_tokens, MAX_TOKENS),
            output_tokens=min(self.output_tokens + other.output_tokens, MAX_TOKENS),
        )


class PlanProposed(Message):
    """A validated plan revision, offered to the gate."""

    type: Literal["plan.proposed"] = "plan.proposed"
    plan: Plan
    plan_hash: str
    planner: str = Field(description="What made the plan: `playbook:<name>`, a model, a person.")
    # Optional and additive: messages from before these fields still decode.
    model: str | None = Field(default=None, description="The LLM that answered, if one did.")
    usage: TokenUsage | None = Field(default=None, description="LLM tokens this revision took.")


class PlanFailed(Message):
    """No valid plan could be made for the goal; `reasons` says why, each a sentence."""

    type: Literal["plan.failed"] = "plan.failed"
    reasons: list[str] = Field(min_length=1)


class Decision(BaseModel):
    """What the gate decided of one plan revision, by rule or by a person, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["approve", "deny", "hold", "reject", "expire"]
    decided_by: str = Field(description="`policy` or a reviewer's name.")
    rule: str | None = None
    reason: str
    policy_version: str
    shadow_action: Action | None = Field(
        default=None, description="In shadow mode: what the policy would have decided."
    )
    # Never sent nor stored: the hold records what it asks (`approval_gate.holds`).
    _also_held_for: tuple[str, ...] = PrivateAttr(default=())

    @property
    def also_held_for(self) -> tuple[str, ...]:
        """Other rules whose terms a hold takes on besides `rule`'s.

        A rule that could not be evaluated may have been the one to match, or the one after it.
        """
        return self._also_held_for

    def holding_also_for(self, rules: tuple[str, ...]) -> Decision:
        """Return this decision, its hold taking on the terms of `rules` too."""
        held = self.model_copy()
        held._also_held_for = rules
        return held


class PlanDecided(Message):
    """A plan that will not run now: held for a person, denied, rejected or expired."""

    type: Literal["plan.held", "plan.denied", "plan.rejected", "plan.expired"]
    plan_id: Identifier
    revision: int
    plan_hash: str
    decision: Decision


class ReviewDecided(Message):
    """A person approved a held revision: the gate checks it against the hold, then signs.

    Only the gate holds the signing key. The store is the authority: the gate acts on the
    person's decision it finds recorded for this plan (who, with which roles), never on what
    this message claims; the message only wakes it.
    """

    type: Literal["review.decided"] = "review.decided"
    plan_id: Identifier
    revision: int = Field(ge=1)
    plan_hash: str = Field(max_length=80)
    decided_by: str = Field(max_length=200, description="The authenticated reviewer.")


class Approval(BaseModel):
    """The record the gate signs: this exact plan (by hash) may run once, until `expires_at`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approval_id: Identifier = Field(default_factory=new_id)
    plan_id: Identifier
    plan_hash: str
    goal_id: Identifier
    revision: int
    decision: Literal["approve"] = "approve"
    decided_by: str
    rule: str | None = None
    policy_version: str
    key_id: str
    issued_at: datetime
    expires_at: datetime
    # Every reviewer whose approval released the plan, where a rule asked for several.
    approvers: tuple[str, ...] = ()


class Signature(BaseModel):
    """One DSSE signature: the signing key's id and the base64 signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keyid: str = Field(max_length=200)
    sig: str = Field(max_length=1000)


class SignedEnvelope(BaseModel):
    """A DSSE envelope: base64 payload, its type, and signatures over PAE(type, payload).

    Written with DSSE's own field names (`payloadType`), so that any DSSE verifier reads it;
    `payload_type`, as envelopes stored before were written, is still read.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    payload_type: str = Field(alias="payloadType")
    payload: str
    # A few keys sign at once while one replaces another; thousands only flood a refusal.
    signatures: list[Signature] = Field(min_length=1, max_length=MAX_SIGNATURES)


class PlanApproved(Message):
    """A plan released for execution, with the signed approval that binds its hash."""

    type: Literal["plan.approved"] = "plan.approved"
    plan: Plan
    approval: SignedEnvelope


class PreviewRequested(Message):
    """The gate asks an executor what a held plan would do: reads run, writes only say."""

    type: Literal["plan.preview_requested"] = "plan.preview_requested"
    plan: Plan
    plan_hash: str


PreviewStatus = Literal["ran", "failed", "previewed", "skipped", "pending"]


class StepPreview(BaseModel):
    """One step of a dry run: a read's real output, or what a write would do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_id: str
    tool: str
    effect: Literal["read", "write"]
    status: PreviewStatus = Field(
        description="`ran`: a read ran for real; `previewed`: a write said what it would do; "
        "`skipped`: its `when` is false or a read it needs failed; `pending`: it needs the "
        "output of a write, which a preview never runs; `failed`: the read failed."
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="Arguments with every reference a read could resolve."
    )
    output: Any = None
    preview: str | None = Field(default=None, description="What the write would do.")
    note: str | None = None


class PlanPreviewed(Message):
    """A held plan's dry run is ready for reviewers (the store keeps it with the plan)."""

    type: Literal["plan.previewed"] = "plan.previewed"
    plan_id: Identifier
    plan_hash: str
    steps: list[StepPreview]


class StepFinished(Message):
    """One step's outcome, as the executor recorded it."""

    type: Literal["step.finished"] = "step.finished"
    plan_id: Identifier
    step_id: str
    tool: str
    status: StepStatus
    output: Any = None
    error: str | None = None
    duration_ms: float = 0.0


class ExecutionCompleted(Message):
    """Every step of an approved plan ran or was skipped by its condition."""

    type: Literal["execution.completed"] = "execution.completed"
    plan_id: Identifier
    steps: dict[str, StepStatus]


class ExecutionFailed(Message):
    """An approved plan stopped: a step failed, or the approval did not hold."""

    type: Literal["execution.failed"] = "execution.failed"
    plan_id: Identifier
    reason: str
    steps: dict[str, StepStatus] = Field(default_factory=dict)


class ExecutionCancelled(Message):
    """An approved plan's run stopped because an operator cancelled its goal: no failure.

    The steps already running when the goal was cancelled finished and were recorded; no other
    step started (`steps` says which is which). The planner never plans a cancelled goal again.
    """

    type: Literal["execution.cancelled"] = "execution.cancelled"
    plan_id: Identifier
    reason: str = Field(description="Who cancelled the goal and why, as its status says.")
    cancelled_by: str | None = Field(default=None, description="Who cancelled it, if recorded.")
    steps: dict[str, StepStatus] = Field(default_factory=dict)


class ExecutionPaused(Message):
    """A run stopped for a person: a write step may or may not have happened (`unknown`).

    The goal waits in `needs_attention` until someone settles each such step (it happened,
    or it did not and may run again); then the run resumes where it stopped.
    """

    type: Literal["execution.paused"] = "execution.paused"
    plan_id: Identifier
    reason: str
    steps: dict[str, StepStatus] = Field(default_factory=dict)


class DeadLetter(BaseModel):
    """A message that can never be handled, kept with the reason for an operator to inspect."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["dead.letter"] = "dead.letter"
    message_id: str = Field(default_factory=new_id)
    reason: str
    queue: str
    routing_key: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # Checked as base64 when read: a forged letter that is not was replayed as far as it, then
    # `dlq replay --all` stopped with a traceback, every time.
    body_b64: str = Field(
        description="The original body, base64, for replay.",
        pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
    )
    failed_at: datetime = Field(default_factory=utcnow)


StageMessage = (
    GoalSubmitted
    | PlanProposed
    | PlanFailed
    | PlanDecided
    | PlanApproved
    | ReviewDecided
    | PreviewRequested
    | PlanPreviewed
    | StepFinished
    | ExecutionCompleted
    | ExecutionFailed
    | ExecutionCancelled
    | ExecutionPaused
)

MESSAGE_MODELS: dict[str, type[Message]] = {
    "goal.submitted": GoalSubmitted,
    "plan.proposed": PlanProposed,
    "plan.failed": PlanFailed,
    "plan.held": PlanDecided,
    "plan.denied": PlanDecided,
    "plan.rejected": PlanDecided,
    "plan.expired": PlanDecided,
    "plan.approved": PlanApproved,
    "review.decided": ReviewDecided,
    "plan.preview_requested": PreviewRequested,
    "plan.previewed": PlanPreviewed,
    "step.finished": StepFinished,
    "execution.completed": ExecutionCompleted,
    "execution.failed": ExecutionFailed,
    "execution.cancelled": ExecutionCancelled,
    "execution.paused": ExecutionPaused,
}
"""Message type (= routing key) to the model that decodes it; each has a route (`check_routes`)."""
