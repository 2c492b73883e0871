"""A held plan as reviewers read it: one shape for the API, the page and `review --json`.

`plangate review list --json` and `review show --json` print what `GET /api/v1/reviews` and
`GET /api/v1/reviews/{plan_id}` answer, whether the command reads the store itself or asks a
`serve` (`--server`): a script written against one works against the other.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from approval_gate.held_plan import HeldPlan
from approval_gate.revisions import catalog_misfit, plan_diff
from plangate.store.goal_list import submitters_said
from schemas import Catalog, StepPreview
from schemas.data_flow import untrusted_sources
from schemas.goal_status_schema import GoalStatus
from schemas.tool_spec import Effect


class ReviewStep(BaseModel):
    """One step as a reviewer sees it: `effect` comes from the tool catalog."""

    id: str
    tool: str
    effect: Effect = Field(description="A tool missing from the catalog is `write`.")
    args: dict[str, Any]
    when: str | None = None
    after: list[str] = []
    untrusted_from: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Inputs (arguments, or `when`) fed by steps whose output is untrusted, "
        "each with those steps as `id (tool)`.",
    )


class PolicyDecision(BaseModel):
    """What the policy decided of the revision, and why."""

    action: str
    rule: str | None
    reason: str


class Replacement(BaseModel):
    """The newer revision that replaced this one: it, not this one, waits for a decision."""

    plan_id: str
    revision: int


class GivenApproval(BaseModel):
    """One reviewer's approval of the revision."""

    approved_by: str
    comment: str = Field(
        description='What they wrote, redacted as stored; "" if they gave no comment.'
    )
    approved_at: datetime


class ReviewerDecision(BaseModel):
    """How a person (or the expiry) decided the revision once it was held."""

    action: str = Field(
        description="approve, reject, edit (an edit replaced it: `replaced_by`) or expire."
    )
    decided_by: str = Field(
        description="The reviewer (`gate` for an expiry); of several approvals, the last one's."
    )
    comment: str = Field(
        description='What they wrote, redacted as stored; "" if they gave no comment. Of '
        "several approvals, the last one's: `approvals` has each one's."
    )
    decided_at: datetime
    approvals: list[GivenApproval] = Field(
        default=[],
        description="Every approval of the revision, in turn, each with its comment: of a "
        "plan two reviewers approved (four eyes), both; of a rejection, those given before it.",
    )


class ReviewSummary(BaseModel):
    """A held plan in the list."""

    plan_id: str
    goal_id: str
    revision: int
    plan_hash: str
    summary: str
    summary_from_revision: int | None = Field(
        default=None,
        description="Where an edit left the summary unchanged: the earlier revision whose "
        "author wrote it (it may not describe the edited steps); null if this revision's own.",
    )
    goal_text: str = Field(description="As submitted: untrusted data, not instructions.")
    goal_status: GoalStatus
    held_since: datetime = Field(description="When the gate held this revision.")
    policy: PolicyDecision | None
    planner: str = Field(description="Who made this revision: a planner, or `edit:<reviewer>`.")
    expires_at: datetime | None = Field(
        default=None, description="When the held plan expires if nobody decides it."
    )
    tools: list[str] = Field(default=[], description="The tools the plan calls, in plan order.")
    writes: bool | None = Field(
        default=None, description="Whether a step writes (a tool missing from the catalog does)."
    )
    required_role: str | None = Field(default=None, description="The role the hold requires.")
    policy_version: str | None = Field(default=None, description="The policy that held it.")
    submitter: str | None = Field(default=None, description="Who or what submitted the goal.")
    approvals_required: int = Field(
        default=1, description="How many distinct reviewers must approve it (four eyes: 2)."
    )
    approvers: list[str] = Field(
        default_factory=list, description="Who approved this revision so far."
    )
    approval_progress: str = Field(
        default="", description='How far its approval is: "1 of 2 approvals (alice)".'
    )
    cannot_be_released: str | None = Field(
        default=None,
        description="Why it can never be released, if so: its hold carries no seal (held by "
        "a gate of a release before schema 0014; approvals of it are refused: edit it with the "
        "same plan, a new revision the gate holds and seals), or fewer reviewers in the "
        "reviewers file may still approve it than it needs (its editors, the submitter where "
        "the rule bars them, and who approved already may not). Null if nothing bars it, or, "
        "for the reviewers, where they are not known (the embedded mode).",
    )
    refused_by_gate: str | None = Field(
        default=None,
        description="Why the gate refused to release it, where it is held again after approvals "
        "(a reviewer removed, a role taken away, a key no longer trusted): the approvals above "
        "are those recorded, and the gate counts them again at the next approval. Null if not.",
    )
    catalog_problem: str | None = Field(
        default=None,
        description="What of it no longer fits the tool catalog (a tool's arguments changed "
        "since it was held): approving it is refused (409), as it would fail when it runs; "
        "edit or reject it. Null if it fits.",
    )
    replaced_by: Replacement | None = Field(
        default=None,
        description="The newest revision, where a later one replaced this one (a reviewer's "
        "edit, or planning again): this one is decided no more. Null if it is the newest.",
    )
    decision: ReviewerDecision | None = Field(
        default=None,
        description="How a person decided this revision (or that it expired); null while "
        "nobody has. Four eyes: the approval that released it (`approvers` names them all).",
    )


class ReviewDetail(ReviewSummary):
    """A held plan in full: its steps, and the diff to the previous revision."""

    steps: list[ReviewStep]
    previous_revision: int | None
    diff: list[str] = Field(description="Unified diff of summary and steps to the previous one.")
    preview_state: Literal["none", "waiting", "ready"] = Field(
        description="`ready`: the dry run below is stored; `waiting`: the holding rule asked "
        "an executor for one; `none`: the rule asks for none (policy `preview: true`)."
    )
    preview: list[StepPreview] | None = Field(
        description="The dry run: each read step's real output, each write step's preview."
    )
    editors: list[str] = Field(
        default_factory=list,
        description="Who wrote this revision or an edit it builds on: none of them may approve it.",
    )
    edited_by: str | None = Field(
        default=None, description="The reviewer whose edit made this revision (null: a planner)."
    )
    edit_comment: str | None = Field(
        default=None,
        description="Why they edited it, as they said (redacted as the audit log keeps it); "
        '"" if they gave no reason, null for a planner\'s revision.',
    )


def summary_of(held: HeldPlan, catalog: Catalog | None = None) -> ReviewSummary:
    """Return a held plan as the list shows it (whether it writes, given the catalog)."""
    decision = held.policy_decision
    tools = [str(step.get("tool")) for step in held.plan.body.get("steps", [])]
    writes = None
    if catalog is not None:
        writes = any(t not in catalog or catalog[t].effect == "write" for t in tools)
    return ReviewSummary(
        plan_id=held.plan.plan_id,
        goal_id=held.goal.id,
        revision=held.plan.revision,
        plan_hash=held.plan.plan_hash,
        summary=str(held.plan.body.get("summary", "")),
        summary_from_revision=held.summary_from,
        goal_text=held.goal.text,
        goal_status=held.goal.status,
        held_since=held.held_since,
        policy=None
        if decision is None
        else PolicyDecision(action=decision.action, rule=decision.rule, reason=decision.reason),
        planner=held.plan.planner,
        expires_at=held.expires_at,
        tools=tools,
        writes=writes,
        required_role=held.required_role,
        policy_version=held.hold.policy_version if held.hold is not None else None,
        submitter=submitters_said(held.goal.meta),
        approvals_required=held.approvals_required,
        approvers=list(held.approvers),
        approval_progress=held.approval_progress,
        cannot_be_released=held.cannot_be_released,
        refused_by_gate=_refused_by_gate(held),
        # Of the revision waiting only: one decided already ran, or never will, as it was.
        catalog_problem=catalog_misfit(held.plan, catalog) if catalog and held.waiting else None,
        replaced_by=_replacement(held),
        decision=None if held.decided is None else ReviewerDecision(**asdict(held.decided)),
    )


def _replacement(held: HeldPlan) -> Replacement | None:
    newer = held.replaced_by
    return None if newer is None else Replacement(plan_id=newer.plan_id, revision=newer.revision)


def detail_of(held: HeldPlan, catalog: Catalog) -> ReviewDetail:
    """Return a held plan in full, each step's effect read from `catalog`."""
    body_steps = held.plan.body.get("steps", [])
    flows = untrusted_sources(body_steps, catalog)
    steps = [
        ReviewStep(
            id=str(step["id"]),
            tool=str(step["tool"]),
            effect=catalog[step["tool"]].effect if step["tool"] in catalog else "write",
            args=dict(step.get("args") or {}),
            when=step.get("when"),
            after=list(step.get("after") or []),
            untrusted_from=flows.get(str(step["id"]), {}),
        )
        for step in body_steps
    ]
    previous = held.previous
    return ReviewDetail(
        **summary_of(held, catalog).model_dump(),
        steps=steps,
        previous_revision=previous.revision if previous else None,
        diff=plan_diff(previous, held.plan).splitlines(),
        preview_state=held.preview_state,
        preview=held.preview,
        editors=list(held.authors),
        edited_by=held.edit.editor if held.edit else None,
        edit_comment=held.edit.comment if held.edit else None,
    )


def _refused_by_gate(held: HeldPlan) -> str | None:
    """Return why the goal is held again, if the gate refused to release its approvals.

    Its approvals read "1 of 1 (dave)" while it stayed held: only `status` and the page said
    why (its reason, which the gate's refusal set; the policy's own otherwise).
    """
    decision = held.policy_decision
    reason = held.goal.status_reason
    if not held.waiting or not reason:
        return None
    return None if decision is not None and reason == decision.reason else reason
