"""Settling steps that may or may not have happened: a person says which, and the run resumes.

An executor that dies in the middle of a non-idempotent write leaves that step `unknown`: the
effect may have happened. The next executor never runs it again on its own; the goal waits in
`needs_attention`. A person checks the outside world and settles the step:

- it happened: the step is recorded as succeeded (with the output they give, if later steps
  use it), and nothing is run again;
- it did not happen: its record is kept as `pending` (with the key it was called with), so the
  resumed run calls it once more, under that key. This is the one way a non-idempotent write
  runs a second attempt, and it is a person's decision, audited.
  On a cancelled goal, where nothing resumes, it is recorded as `skipped`, settled by them.

Either way its `step.settled` entry records what the write was called with (its arguments and
idempotency key, as its `step.unknown` entry does), and `unsettled_steps` shows them: what a
person asks the other system about.

Once no step of the plan is unknown, the plan's own approval is sent again and the run resumes
where it stopped: finished steps are not repeated. A write a cancelled goal's run left in flight
(marked `unknown` by the executors' sweep) is settled alike, to record what happened; nothing
resumes.

Settling decides what the plan's later writes do (an output they use, or a write called
again), so it asks what approving asked: the role the hold requires, and not the submitter
where the hold bars them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jsonschema.exceptions import best_match
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from approval_gate.holds import check_not_submitter, check_reviewer, hold_of
from approval_gate.refusals import refusal_audited
from approval_gate.review_span import settle_span
from plangate.bus import Envelope
from plangate.catalog import read_catalog
from plangate.errors import Conflict, InputInvalid, NotFound
from plangate.goal_status import not_happened
from plangate.person_words import scrubbed
from plangate.redaction import redact_json
from plangate.step_calls import args_of, call_of
from plangate.store import ApprovalRow, GoalRow, PlanRow, StepRunRow, Store, audit
from plangate.store.audit_records import output_digest
from plangate.store.goals import by_id, plan_of, transition
from plangate.store.outbox import emit
from plangate.unknown_calls import since_text
from plangate.unrecorded_keys import CandidateKey, candidate_keys
from schemas import PlanApproved, SignedEnvelope, ToolSpec, utcnow
from schemas.json_schema import errors_of, validator_for

# The goals whose unknown steps a person settles: a run waiting for them, or a cancelled one.
SETTLED_IN = ("needs_attention", "cancelled")


@dataclass(frozen=True)
class UnsettledStep:
    """A step that may or may not have happened, waiting for a person."""

    plan_id: str
    step_id: str
    tool: str
    goal_id: str
    goal_text: str
    attempt: int
    reason: str | None
    since: datetime | None
    goal_status: str = "needs_attention"  # or cancelled: settling it records, resumes nothing
    # What the write was called with, to ask the other system by (redacted, as in the log):
    # None if it cannot be made again (an output its arguments read is not recorded).
    idempotency_key: str | None = None
    args: dict[str, Any] | None = None
    # Claimed before 0015, which records no key: each key a release could have called it with
    # (the other system knows the call by one of them). Empty when its key is recorded.
    candidate_keys: tuple[CandidateKey, ...] = ()


def unsettled_steps(store: Store) -> list[UnsettledStep]:
    """Return every unknown step of a goal waiting for a person, oldest first."""
    with store.session() as session:
        rows = session.execute(
            select(StepRunRow, GoalRow, PlanRow)
            .join(GoalRow, GoalRow.id == StepRunRow.goal_id)
            .join(PlanRow, PlanRow.plan_id == StepRunRow.plan_id)
            .where(StepRunRow.status == "unknown", GoalRow.status.in_(SETTLED_IN))
            .order_by(StepRunRow.finished_at)
        ).all()
        return [_unsettled(session, step, goal, plan) for step, goal, plan in rows]


def _unsettled(session: Session, step: StepRunRow, goal: GoalRow, plan: PlanRow) -> UnsettledStep:
    call = redact_json(call_of(session, plan_of(plan), step.step_id, step.idempotency_key))
    return UnsettledStep(
        step.plan_id,
        step.step_id,
        step.tool,
        goal.id,
        goal.text,
        step.attempt,
        step.error,
        step.finished_at,
        goal.status,
        call.get("idempotency_key"),
        call.get("args"),
        () if step.idempotency_key else keys_unrecorded(session, plan, step.step_id),
    )


def keys_unrecorded(session: Session, plan: PlanRow, step_id: str) -> tuple[CandidateKey, ...]:
    """Return the keys a write claimed before 0015 may have been called with (none if unknown)."""
    body = plan_of(plan)
    step = body.step(step_id)
    args = args_of(session, body, step)
    return () if args is None else candidate_keys(plan.plan_hash, plan.goal_id, step, args)


def settle_step(
    store: Store,
    plan_id: str,
    step_id: str,
    reviewer: str,
    *,
    happened: bool,
    output: Any = None,
    comment: str = "",
    roles: frozenset[str] = frozenset(),
    unknown_since: datetime,
) -> Sequence[Envelope]:
    """Record what a person found of an unknown step; return plan.approved once none is left.

    `roles` are the reviewer's: a plan held for a role is settled only by someone with it.
    `unknown_since`, the `since` of the unknown call they checked (as listed), names the call
    settled: Conflict if the step's unknown call is another one now.
    """
    comment = scrubbed(comment)  # before the refusal's record, the span and the entry
    refusals = refusal_audited(store, plan_id, reviewer, "settle", comment)
    with refusals, store.session() as session:
        named = by_id(
            session, PlanRow, PlanRow.plan_id, plan_id, typed=True
        )  # its start names it too
        plan_id = named.plan_id if named is not None else plan_id
        hold = hold_of(session, plan_id)
        if named is not None and hold is not None:
            # Who may settle first: someone without the role learns nothing of the step's
            # state (it was said before, as a 409, when another had settled it meanwhile).
            check_reviewer(hold, plan_id, reviewer, roles, "settle a step of")
            check_not_submitter(hold, session.get_one(GoalRow, named.goal_id), reviewer)
        row = session.execute(
            select(StepRunRow)
            .where(StepRunRow.plan_id == plan_id, StepRunRow.step_id == step_id)
            .with_for_update()
        ).scalar_one_or_none()
        gone = row is None or row.status == "pending"  # settled "did not happen"
        if gone and named is not None and step_id in _step_ids(named):
            # Settled "did not happen" by someone else meanwhile: its record is gone, and the
            # run claims it afresh. Not "no such step", which sent people looking.
            raise Conflict(
                f"step {step_id!r} of plan {plan_id} is not unknown (settled already, or not "
                "run yet): nothing to settle; `plangate status` shows where its run is"
            )
        if row is None:
            raise NotFound(
                f"plan {plan_id} has no step {step_id!r} on record; "
                "`plangate review unsettled` lists the steps waiting for a person"
            )
        if row.status != "unknown":
            raise Conflict(f"step {step_id!r} is {row.status}, not unknown: nothing to settle")
        _check_same_call(row, unknown_since)
        # Locked: two people settling two steps of one plan agree on what is left.
        goal = session.execute(
            select(GoalRow).where(GoalRow.id == row.goal_id).with_for_update()
        ).scalar_one()
        if goal.status not in SETTLED_IN:
            raise Conflict(
                f"goal {goal.id} is {goal.status}; a step is settled only while its run "
                "waits for a person, or once its goal was cancelled"
            )
        if happened:  # before its span: a settle refused decided nothing
            _check_output(read_catalog(session).get(row.tool), output)
        # In the goal's trace, as a review is: the request it came in is linked.
        with settle_span(goal, plan_id, step_id, reviewer, happened, comment):
            return _record(session, goal, row, reviewer, happened, output, comment, unknown_since)


def _record(
    session: Session,
    goal: GoalRow,
    row: StepRunRow,
    reviewer: str,
    happened: bool,
    output: Any,
    comment: str,
    unknown_since: datetime,
) -> Sequence[Envelope]:
    """Record what `reviewer` found of `row`'s step; return plan.approved once none is left."""
    plan_id, step_id = row.plan_id, row.step_id
    data: dict[str, Any] = {"plan_id": plan_id, "step_id": step_id, "tool": row.tool}
    # What it was called with, as its `step.unknown` entry says: what the person asked after.
    plan_row = session.get_one(PlanRow, plan_id)
    data.update(call_of(session, plan_of(plan_row), step_id, row.idempotency_key))
    if row.idempotency_key is None:  # claimed before 0015: the keys it may have had
        keys = keys_unrecorded(session, plan_row, step_id)
        data["candidate_keys"] = [{"key": c.key, "made_by": c.made_by} for c in keys]
    data.update(happened=happened, attempt=row.attempt, comment=comment)
    data["unknown_since"] = since_text(unknown_since)  # which of its calls was settled
    if happened:
        row.status, row.output, row.error = "succeeded", output, None
        data["output_sha256"] = output_digest(output)
        row.finished_at, row.lease_until = utcnow(), None
    elif goal.status == "needs_attention":
        # Kept, with the key it was called with: the resumed run calls it again under that
        # key, whatever key its release would make (deleted, it made its own).
        row.status, row.error, row.lease_until = "pending", None, None
    else:
        # Nothing resumes a cancelled goal's run: deleted, the row left the step to read as
        # still running (then as "no outcome was recorded"), and out of the export.
        row.status, row.error = "skipped", not_happened(reviewer)
        row.finished_at, row.lease_until = utcnow(), None
        data.update(recorded=row.status, error=row.error)
    audit.append(session, "step.settled", actor=reviewer, goal_id=goal.id, data=data)
    session.flush()
    left = session.scalar(
        select(func.count())
        .select_from(StepRunRow)
        .where(StepRunRow.plan_id == plan_id, StepRunRow.status == "unknown")
    )
    if left or goal.status == "cancelled":  # recorded only: a cancelled run never resumes
        return []
    transition(
        session,
        goal.id,
        "approved",
        by="person",
        actor=reviewer,
        reason="every step that may or may not have happened is settled; the run resumes",
        data={"plan_id": plan_id},
    )
    # The plan's own approval, already used by this run: it resumes the run, nothing more.
    approval = session.execute(
        select(ApprovalRow).where(ApprovalRow.plan_id == plan_id)
    ).scalar_one()
    plan = plan_of(session.get_one(PlanRow, plan_id))
    envelope = SignedEnvelope.model_validate(approval.envelope)
    resumed = PlanApproved(goal_id=goal.id, plan=plan, approval=envelope)
    return [emit(session, resumed, trace_headers=goal.trace_headers)]


def _check_same_call(row: StepRunRow, unknown_since: datetime) -> None:
    """Refuse a settle of an unknown call other than the one its person checked.

    Settled "did not happen", a step is called again, and may be unknown again: a stale page's
    form, a double click or a client's retry then settled the later call, which nobody had
    checked, and the write ran a third time. Named always: a settle naming no call did so too.
    """
    if row.finished_at == unknown_since:
        return
    now = since_text(row.finished_at) if row.finished_at else "a time not recorded"
    # Either way round: a client that sent the time cut to seconds, or the docs' example, was
    # told the step had been settled and called again, when nobody had settled it.
    raise Conflict(
        f"step {row.step_id!r} is unknown since {now}, not since {since_text(unknown_since)}: "
        "it was settled and called again since you looked, or the since sent is not the one "
        "listed; check the call unknown now, then settle it naming its since exactly as listed "
        "(GET /api/v1/reviews/unsettled, `plangate review unsettled`)"
    )


def _step_ids(plan: PlanRow) -> set[str]:
    return {str(step.get("id")) for step in plan.body.get("steps", []) if isinstance(step, dict)}


def _check_output(spec: ToolSpec | None, output: Any) -> None:
    """Refuse an output that later steps could not use as the tool's own."""
    if spec is None or spec.output_schema is None or output is None:
        return
    schema = spec.output_schema
    problem = best_match(errors_of(validator_for(schema), output))
    if problem is not None:
        where = "/".join(str(part) for part in problem.absolute_path) or "the output"
        raise InputInvalid(
            f"that is not what {spec.name} returns ({where}: {problem.message}); "
            "give its output as the tool would have, or leave it out"
        )
