"""Where a goal stands, read at one moment: its state, its latest plan, decision and steps.

What `Client.status`, `plangate status` and `GET /api/v1/goals/{id}` show.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate import telemetry
from plangate.store import (
    TERMINAL_STATUSES,
    ApprovalRow,
    AuditRow,
    DecisionRow,
    HoldRow,
    PlanRow,
    ReviewerApprovalRow,
    StepRunRow,
    outbox_waiting,
)
from plangate.store.goal_list import submitters_said
from plangate.store.goals import get_goal, latest_plan
from plangate.store.plan_edits import edit_of, summary_written_in
from plangate.unchecked_approvals import unchecked_reason
from schemas import Approval, SignedEnvelope, Step
from schemas.references import dependencies

# A step of a cancelled goal that started before the cancel, and has not answered yet.
UNRECORDED = "started before the goal was cancelled: it finishes, and is recorded then"
NOT_RECORDED = (
    "started before the goal was cancelled, and no outcome was recorded: its executor stopped "
    "before the step ended"
)
# Past this long after the cancel, a started step still unrecorded is no longer running: longer
# than a tool's default deadline (60 s) and a step's lease (300 s). Its executor died, and a
# cancelled goal's run is taken up by no other.
STILL_RUNNING_AT_MOST = timedelta(minutes=10)


@dataclass(frozen=True)
class StepResult:
    """One step of the goal's latest plan: what it returned (or why not) and how long it took."""

    step_id: str
    tool: str
    status: str  # pending, running, succeeded, failed, skipped, unknown
    output: Any = None
    error: str | None = None
    duration_ms: float | None = None
    attempt: int | None = None
    # A write being called: when its claim runs out, and, if its executor is gone, it is
    # marked `unknown` for a person (it read "running" for the lease's five minutes, no more).
    claimed_until: datetime | None = None
    # A write of unknown outcome a person settled: found to have happened (succeeded, its
    # output theirs), or not on a cancelled goal (skipped). It has no duration (from the call
    # to the settling, it read as a 6-minute call).
    settled_by: str | None = None
    # What the plan calls it with, as planned (`${step.field}` references not filled in): how
    # much, to whom. A tool's output alone left a payment's amount and payee unsaid.
    args: dict[str, Any] | None = None


@dataclass(frozen=True)
class GoalRetry:
    """A goal's last retry (`plangate goals retry`), as its audit entry records it."""

    by: str  # the reviewer who sent it back to the planner
    at: datetime
    from_state: str  # the state it was retried from: failed, expired or plan_failed
    reason: str  # as they gave it; "" if they gave none


@dataclass(frozen=True)
class GoalStatus:
    """Where a goal stands: its state, its latest plan, the decision on it and its steps."""

    goal_id: str
    status: str
    reason: str | None
    updated_at: datetime
    trace_id: str | None = None
    plan_id: str | None = None
    revision: int | None = None
    summary: str | None = None
    decision: dict[str, str | None] | None = None
    steps: dict[str, str] = field(default_factory=dict)
    results: tuple[StepResult, ...] = ()  # every step of the plan, in plan order
    submitted_by: str | None = None  # as its submitter said (metadata: `submitted_by`, ...)
    # Released: the approvers the gate counted and signed; before: the approvals given so far,
    # which the gate counts against the reviewers file as it releases the plan (a reviewer
    # removed since counts no more: listed as "counted", they read as 2 of 2 on a held plan).
    approvers: tuple[str, ...] = ()
    approvers_signed: bool = False  # whether `approvers` are those of the signed approval
    # Approved, not started: the plan's tools no running executor has offered lately (its
    # executors hand it on, then fail it), read from the catalog only in that state.
    unoffered: tuple[str, ...] = ()
    planner: str | None = None  # who made the latest revision: a planner, or `edit:<reviewer>`
    edit_comment: str | None = None  # why its editor edited it ("" if they said not); an edit's
    held_by: str | None = None  # the rule that held the latest revision for a person, if one did
    # The earlier revision whose summary an edit kept (its words over steps they may no
    # longer describe: "Refund 80" over an amount of 75), if one did.
    summary_from_revision: int | None = None
    # Held: what of the plan no longer fits the tool catalog (its approval would be refused),
    # so that its submitter, polling, is not left waiting for a hold that cannot end well.
    catalog_problem: str | None = None
    # Approved: why an executor could not check the gate's approval (a key it lacks), if so.
    approval_unchecked: str | None = None
    # Its last retry: who sent it back to the planner, when, from which state, and why. (Only
    # the audit log said so: `status` showed revision 2 under the submitter's name alone.)
    retried: GoalRetry | None = None
    # Since when a message of it has waited in the outbox for a broker that did not take it
    # (away, or refusing the sender's settings): it said only "submitted", as if planning.
    unsent_since: datetime | None = None

    @property
    def outputs(self) -> dict[str, Any]:
        """Each finished step's output, by step id."""
        return {r.step_id: r.output for r in self.results if r.status == "succeeded"}

    @property
    def terminal(self) -> bool:
        """True once the goal will not change by itself any more."""
        return self.status in TERMINAL_STATUSES


def read_status(session: Session, goal_id: str, *, exact: bool = False) -> GoalStatus:
    """Return where a goal stands (NotFound if there is none; a short id unless `exact`)."""
    goal = get_goal(session, goal_id, typed=True, exact=exact)
    plan = latest_plan(session, goal.id)  # goal_id may be a short start of goal.id
    base = GoalStatus(
        goal_id=goal.id,
        status=goal.status,
        reason=goal.status_reason,
        updated_at=goal.updated_at,
        trace_id=telemetry.trace_id_of(goal.trace_headers),
        submitted_by=submitters_said(goal.meta or {}),
        # Asked of every goal: a goal retried from plan_failed has no plan, or a revision 1.
        retried=_last_retry(session, goal.id),
        unsent_since=outbox_waiting.waiting_since(session, goal.id),
    )
    if plan is None:
        return base
    decision = session.execute(
        select(DecisionRow)
        .where(DecisionRow.plan_id == plan.plan_id)
        .order_by(DecisionRow.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    # A `pending` row is a write settled as not happened, kept only for the key its call made
    # again passes: shown as the row it replaced was deleted (to run, or skipped by a cancel).
    runs = {
        row.step_id: row
        for row in session.execute(
            select(StepRunRow).where(StepRunRow.plan_id == plan.plan_id)
        ).scalars()
        if row.status != "pending"
    }
    cancelled = goal.status == "cancelled"
    settlers = _settlers(session, goal.id, plan.plan_id) if runs or cancelled else {}
    started = (
        _started_before_cancel(session, plan, runs, goal.updated_at, settlers) if cancelled else {}
    )
    results = tuple(
        replace(
            started.get(str(step.get("id")))
            or _result(step, runs.get(str(step.get("id"))), goal.status, settlers),
            args=step.get("args") if isinstance(step.get("args"), dict) else None,
        )
        for step in plan.body.get("steps", [])
    )
    unoffered: tuple[str, ...] = ()
    unchecked = unchecked_reason(session, goal.id) if goal.status == "approved" else None
    if goal.status == "approved":
        # Imported here: the catalog brings jsonschema, which `status` of any other goal never
        # needs (about 40 ms of every start).
        from plangate.catalog import not_offered

        unoffered = tuple(not_offered(session, {result.tool for result in results}))
    misfit = _catalog_problem(session, plan) if goal.status == "held" else None
    edit = edit_of(session, plan)
    signed = _signed_approvers(session, plan.plan_id)
    hold = session.get(HoldRow, plan.plan_id)
    return replace(
        base,
        plan_id=plan.plan_id,
        revision=plan.revision,
        summary=str(plan.body.get("summary", "")),
        planner=plan.planner,
        edit_comment=edit.comment if edit is not None else None,
        held_by=hold.rule if hold is not None else None,
        summary_from_revision=summary_written_in(session, plan),
        decision=None
        if decision is None
        else {
            "action": decision.action,
            "decided_by": decision.decided_by,
            "rule": decision.rule,
            "reason": decision.reason,
            "policy_version": decision.policy_version,
            "decided_at": utc_text(decision.created_at),
        },
        # An ended goal's steps as its results show them: the rows alone left out a step
        # running when the goal was cancelled, and those that will never start (a rejected
        # goal's `steps` were {} beside results listing each step as skipped).
        steps={r.step_id: r.status for r in results}
        if goal.status in TERMINAL_STATUSES
        else {step_id: run.status for step_id, run in runs.items()},
        results=results,
        approvers=signed if signed is not None else _given(session, plan.plan_id),
        approvers_signed=signed is not None,
        unoffered=unoffered,
        catalog_problem=misfit,
        approval_unchecked=unchecked,
    )


def _catalog_problem(session: Session, plan: PlanRow) -> str | None:
    """Say what of a held plan no longer fits the catalog, as the review does; None if it fits."""
    # Imported here, as above: only a held goal's status reads the catalog.
    from approval_gate.revisions import catalog_misfit
    from plangate.catalog import read_catalog

    return catalog_misfit(plan, read_catalog(session))


def _given(session: Session, plan_id: str) -> tuple[str, ...]:
    """Return who approved the plan so far, in turn (as recorded: the gate counts them later)."""
    return tuple(
        session.execute(
            select(ReviewerApprovalRow.reviewer)
            .where(ReviewerApprovalRow.plan_id == plan_id)
            .order_by(ReviewerApprovalRow.created_at)
        ).scalars()
    )


def _signed_approvers(session: Session, plan_id: str) -> tuple[str, ...] | None:
    """Return the people the gate's signed approval names (None: no approval signed, or by policy).

    Shown, not trusted: the executor verifies the signature; `audit verify` holds the row to
    the log.
    """
    envelope = session.execute(
        select(ApprovalRow.envelope).where(ApprovalRow.plan_id == plan_id)
    ).scalar_one_or_none()
    if envelope is None:
        return None
    try:
        payload = base64.b64decode(SignedEnvelope.model_validate(envelope).payload)
        approval = Approval.model_validate_json(payload)
    except (ValueError, TypeError):  # a row no executor would take either: said elsewhere
        return None
    if approval.approvers:
        return approval.approvers
    return None if approval.decided_by == "policy" else (approval.decided_by,)


def _last_retry(session: Session, goal_id: str) -> GoalRetry | None:
    """Return the goal's last retry (`plangate goals retry`): by whom, when, from where, why."""
    entry = session.execute(
        select(AuditRow.actor, AuditRow.data, AuditRow.at)
        .where(AuditRow.goal_id == goal_id, AuditRow.kind == "goal.submitted")
        .order_by(AuditRow.seq.desc())
        .limit(1)
    ).one_or_none()
    if entry is None or not isinstance(entry.data, dict) or "retried_from" not in entry.data:
        return None
    # The transition's reason is "retried by WHO: REASON" (goal_retry.py), or without ": REASON".
    said, prefix = str(entry.data.get("reason") or ""), f"retried by {entry.actor}"
    reason = said.removeprefix(prefix).removeprefix(": ") if said.startswith(prefix) else said
    at = datetime.fromisoformat(entry.at)
    return GoalRetry(entry.actor, at, str(entry.data["retried_from"]), reason)


def not_happened(reviewer: str) -> str:
    """Return the error a cancelled goal's step settled as not happened is recorded with."""
    return (
        f"did not happen, as {reviewer} found; its goal was cancelled, so it was not called again"
    )


def _settlers(session: Session, goal_id: str, plan_id: str) -> dict[str, tuple[str, str]]:
    """Return who last settled each step of `plan_id`, and the status it left, by step id.

    Found to have happened: succeeded. Found not to have happened on a cancelled goal:
    skipped. On a goal that went on, "not happened" left no row (the step runs again):
    `NOT_HAPPENED`, which a cancel then leaves as it is.
    """
    entries = session.execute(
        select(AuditRow.actor, AuditRow.data)
        .where(AuditRow.goal_id == goal_id, AuditRow.kind == "step.settled")
        .order_by(AuditRow.seq)
    )
    settled = {}
    for actor, data in entries:
        if not isinstance(data, dict) or data.get("plan_id") != plan_id:
            continue
        left = "succeeded" if data.get("happened") else data.get("recorded") or NOT_HAPPENED
        if isinstance(left, str):
            settled[str(data.get("step_id"))] = (actor, left)
    return settled


NOT_HAPPENED = "not_happened"  # settled so, its row cleared: no status of its own


def _started_before_cancel(
    session: Session,
    plan: PlanRow,
    runs: Mapping[str, StepRunRow],
    cancelled_at: datetime,
    settlers: Mapping[str, tuple[str, str]],
) -> dict[str, StepResult]:
    """Return, as running, the steps of a cancelled goal's run that started and are unrecorded.

    A cancel lets the steps already started finish (they are recorded then), but the store
    holds a read only once it has answered: until then it has no row, and it read as "not
    run". A step without a row started if the goal's run had begun and every step before it
    is recorded as succeeded: the run records as skipped the steps it leaves unstarted.
    Long after the cancel (`STILL_RUNNING_AT_MOST`), such a step is shown skipped: its
    executor died, and "running" was shown for good. One a person last settled as not having
    happened (its row cleared for a run the cancel then stopped, or cleared so by a release
    before 2026-12) is skipped, settled so by them: it read as running, then as unrecorded.
    """
    steps = [Step.model_validate(step) for step in plan.body.get("steps", [])]
    unrecorded = [step for step in steps if step.id not in runs]
    if not unrecorded or not _run_began(session, plan):
        return {}
    succeeded = {step_id for step_id, run in runs.items() if run.status == "succeeded"}
    ended = datetime.now(UTC) - cancelled_at > STILL_RUNNING_AT_MOST
    status, note = ("skipped", NOT_RECORDED) if ended else ("running", UNRECORDED)
    shown = {}
    for step in unrecorded:
        settler, left = settlers.get(step.id, ("", ""))
        if left == NOT_HAPPENED:
            found = not_happened(settler)
            shown[step.id] = StepResult(
                step.id, step.tool, "skipped", error=found, settled_by=settler
            )
        elif dependencies(step) <= succeeded:
            shown[step.id] = StepResult(step.id, step.tool, status, error=note)
    return shown


def _run_began(session: Session, plan: PlanRow) -> bool:
    """Say whether an executor moved the goal to `running` with this plan."""
    moves = session.execute(
        select(AuditRow.data).where(
            AuditRow.goal_id == plan.goal_id, AuditRow.kind == "goal.running"
        )
    ).scalars()
    return any(isinstance(data, dict) and data.get("plan_id") == plan.plan_id for data in moves)


def _result(
    step: Mapping[str, Any],
    run: StepRunRow | None,
    goal_status: str,
    settlers: Mapping[str, tuple[str, str]],
) -> StepResult:
    step_id, tool = str(step.get("id")), str(step.get("tool"))
    if run is None and goal_status in TERMINAL_STATUSES:  # it never will: not "pending"
        return StepResult(step_id, tool, "skipped", error=f"not run: the goal is {goal_status}")
    if run is None:
        return StepResult(step_id, tool, "pending")
    settler, left = settlers.get(step_id, (None, None))
    settled_by = settler if left == run.status else None
    duration = None
    # An `unknown` step's end is when its claim ran out, not when its call ended (if it did):
    # "unknown in 300166 ms" read as a call of five minutes.
    if run.finished_at is not None and settled_by is None and run.status != "unknown":
        duration = round((run.finished_at - run.started_at).total_seconds() * 1000, 1)
    claimed = run.lease_until if run.status == "running" else None
    return StepResult(
        step_id,
        tool,
        run.status,
        run.output,
        run.error,
        duration,
        run.attempt,
        claimed,
        settled_by,
    )


def utc_text(moment: datetime) -> str:
    """Return a stored time as ISO 8601 in UTC, as `--json` and the API print times (`...Z`)."""
    text = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
    return text.removesuffix("+00:00") + "Z"
