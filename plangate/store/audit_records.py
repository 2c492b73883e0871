"""Whether what `status`, `goals list` and the review show agrees with the audit log.

The chains prove the log, but the views read other tables: a goal's row, its plans, the
decisions, the approvals counted, the steps' results. Someone with write access to the database
could rewrite those (`decided_by = 'mallory'`, a plan's body, a rejected goal shown completed)
and the log would still verify. Each such row restates what an entry recorded and hashed: a
goal's text and status, a plan's hash, who decided, who approved, a step's status and output.
So this reads the log once more, goal by goal, and names the first row that says otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Text, exists, func, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from plangate.errors import AuditBroken
from plangate.store.audit import stored_data
from plangate.store.audit_recorded import POLICY_DECIDER, Recorded, other_time, shown_as_recorded
from plangate.store.decision_records import (
    approval_problems,
    decision_said_problems,
    hold_problems,
    reviewer_approval_problems,
)
from plangate.store.engine import Store
from plangate.store.models import (
    EDIT_PREFIX,
    AuditRow,
    DecisionRow,
    GoalRow,
    PlanRow,
    ReviewerApprovalRow,
    StepRunRow,
)
from schemas import Plan, plan_hash
from schemas.hashing import sha256_hex


def output_digest(output: Any) -> str:
    """Return the digest a step's audit entry records of its output, as stored.

    Over sorted-key JSON of the value as a JSON column gives it back, on SQLite or in
    PostgreSQL's jsonb (which writes `1e16` as 10000000000000000 and `1e300` as its digits):
    each integral number as its exact integer. Not RFC 8785, which refuses an integer past
    2**53 (an id, a timestamp in nanoseconds), and whose error left the step unrecorded.
    """
    text = json.dumps(output, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    stored = json.loads(text, parse_float=_number)
    again = json.dumps(stored, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + sha256_hex(again.encode("utf-8", "surrogatepass"))


def _number(text: str) -> int | float:
    """Read a JSON number as a JSON column gives it back: integral ones as exact integers."""
    exact = Decimal(text)
    return int(exact) if exact == exact.to_integral_value() else float(text)


def disagreement(
    store: Store, *, batch: int = 200, progress: Callable[[int, int], None] | None = None
) -> str | None:
    """Return the first row a view shows that the audit log does not record, or None.

    `progress` is told the goals checked so far, and how many there are.
    """
    gone = _submitted_goal_gone(store)
    if gone is not None:
        return gone
    total = _goal_count(store) if progress is not None else 0
    after, done = "", 0
    while True:
        # One snapshot for the batch: a goal moved between two of its statements, by a worker
        # running beside the check, read as a row changed outside plangate.
        with store.snapshot() as session:
            goals = list(
                session.execute(
                    select(GoalRow).where(GoalRow.id > after).order_by(GoalRow.id).limit(batch)
                ).scalars()
            )
            if not goals:
                return None
            found = next(_problems(session, goals), None)
        if found is not None:
            return found
        after = goals[-1].id
        done += len(goals)
        if progress is not None:
            progress(done, max(done, total))


def _goal_count(store: Store) -> int:
    with store.reading() as session:
        return int(session.execute(select(func.count()).select_from(GoalRow)).scalar_one())


def _submitted_goal_gone(store: Store) -> str | None:
    """Name a goal the log records the submission of, whose row is gone from every view."""
    with store.reading() as session:
        gone = session.execute(
            select(AuditRow.goal_id)
            .where(
                AuditRow.kind == "goal.submitted",
                ~exists().where(GoalRow.id == AuditRow.goal_id),
            )
            .limit(1)
        ).scalar_one_or_none()
    if gone is None:
        return None
    return (
        f"goal {gone}: its audit log records its submission, but its row is gone from "
        "`status` and `goals list`: it was deleted outside plangate"
    )


def _problems(session: Session, goals: Sequence[GoalRow]) -> Iterator[str]:
    ids = [goal.id for goal in goals]
    recorded = {goal_id: Recorded() for goal_id in ids}
    entries = (
        select(
            AuditRow.seq,
            AuditRow.goal_id,
            AuditRow.kind,
            AuditRow.actor,
            sql_cast(AuditRow.data, Text),
            AuditRow.at,
        )
        .where(AuditRow.goal_id.in_(ids))
        # In the order written: a goal's entries made before per-goal chains (0013) are in the
        # chain `global`, which sorts after its own; by chain, its last move read as its first.
        .order_by(AuditRow.seq)
    )
    for seq, goal_id, kind, actor, text, at in session.execute(entries):
        recorded[str(goal_id)].read(kind, actor, _data(seq, text), at)  # one of `ids`
    for goal in goals:
        yield from _goal_problems(goal, recorded[goal.id])
    yield from _plan_rows_problems(session, ids, recorded)
    yield from _decision_rows_problems(session, ids, recorded)
    yield from hold_problems(session, ids, recorded)
    yield from approval_problems(session, ids, recorded)
    yield from reviewer_approval_problems(session, ids, recorded)
    yield from _step_rows_problems(session, ids, recorded)


def _plan_rows_problems(
    session: Session, ids: list[str], recorded: dict[str, Recorded]
) -> Iterator[str]:
    plans_shown: set[str] = set()
    for plan in session.execute(select(PlanRow).where(PlanRow.goal_id.in_(ids))).scalars():
        plans_shown.add(plan.plan_id)
        yield from _plan_problems(plan, recorded[plan.goal_id])
    for goal_id in ids:
        for plan_id in sorted(recorded[goal_id].plans.keys() - plans_shown):
            yield (
                f"plan {plan_id} of goal {goal_id}: its audit log records it, but its row is "
                "gone: `status` and the review page no longer show it; the plans were changed "
                "outside plangate"
            )


def _decision_rows_problems(
    session: Session, ids: list[str], recorded: dict[str, Recorded]
) -> Iterator[str]:
    decisions = session.execute(select(DecisionRow).where(DecisionRow.goal_id.in_(ids)))
    shown: set[tuple[str, str, str]] = set()
    for decision in decisions:
        row = decision[0]
        shown.add((row.plan_id, row.decided_by, row.action))
        if (row.decided_by, row.action) not in recorded[row.goal_id].deciders.get(row.plan_id, ()):
            yield (
                f"plan {row.plan_id} shows a decision to {row.action} by {row.decided_by!r}, "
                "which the audit log does not record: the decisions table was changed outside "
                "plangate"
            )
        else:
            yield from decision_said_problems(row, recorded[row.goal_id])
    for goal_id in ids:
        yield from _unshown_decisions(recorded[goal_id], shown)
    approvals = select(ReviewerApprovalRow, PlanRow.goal_id).join(
        PlanRow, PlanRow.plan_id == ReviewerApprovalRow.plan_id
    )
    for approval, goal_id in session.execute(approvals.where(PlanRow.goal_id.in_(ids))):
        if approval.reviewer not in recorded[goal_id].approved_by(approval.plan_id):
            yield (
                f"plan {approval.plan_id} shows an approval by {approval.reviewer!r}, which the "
                "audit log does not record: the approvals were changed outside plangate"
            )


def _step_rows_problems(
    session: Session, ids: list[str], recorded: dict[str, Recorded]
) -> Iterator[str]:
    rows = session.execute(select(StepRunRow).where(StepRunRow.goal_id.in_(ids))).scalars()
    steps_shown: set[tuple[str, str]] = set()
    for step in rows:
        steps_shown.add((step.plan_id, step.step_id))
        yield from _step_problems(step, recorded[step.goal_id])
    for goal_id in ids:
        for plan_id, step_id in recorded[goal_id].steps.keys() - steps_shown:
            yield (
                f"step {step_id} of plan {plan_id}: its audit log records it "
                f"{recorded[goal_id].steps[plan_id, step_id]['status']}, but its row is gone: "
                "`status` shows it as not run; the steps were changed outside plangate"
            )


def _unshown_decisions(recorded: Recorded, shown: set[tuple[str, str, str]]) -> Iterator[str]:
    """Name a person's decision the log records last on a plan, which no row shows."""
    for plan_id, (who, action) in recorded.last_decision.items():
        if who != POLICY_DECIDER and (plan_id, who, action) not in shown:
            yield (
                f"plan {plan_id}: its audit log records a decision to {action} by {who!r}, "
                "which the decisions table no longer shows: it was changed outside plangate"
            )


def _data(seq: int, text: str | None) -> dict[str, Any]:
    try:
        data = stored_data(seq, text)
    except AuditBroken:  # the chain walk has said so already
        return {}
    return data if isinstance(data, dict) else {}


def _goal_problems(goal: GoalRow, recorded: Recorded) -> Iterator[str]:
    where = f"goal {goal.id}"
    if recorded.submitted is None:
        yield (
            f"{where} is shown, but the audit log has no entry of its submission: its chain was "
            "removed, or the goal was added outside plangate"
        )
        return
    submitted = [recorded.submitted.get("text"), recorded.submitted.get("metadata")]
    if not shown_as_recorded([goal.text, goal.meta], submitted):
        yield f"{where} shows a text or metadata other than its submission recorded"
    if (at := other_time(goal.created_at, recorded.submitted)) is not None:
        yield (
            f"{where} shows it was submitted at {_shown_time(goal.created_at)}, but its audit "
            f"log records its submission at {at}: the goal's row was changed"
        )
    if recorded.status is not None and not (
        recorded.status[0] == goal.status
        and shown_as_recorded(goal.status_reason or None, recorded.status[1])
    ):
        status, reason = recorded.status
        yield (
            f"{where} shows status {goal.status!r} ({goal.status_reason or 'no reason'}), but "
            f"its audit log last moved it to {status!r} ({reason or 'no reason'}): the goal's "
            "row was changed"
        )


def _plan_problems(plan: PlanRow, recorded: Recorded) -> Iterator[str]:
    where = f"plan {plan.plan_id} of goal {plan.goal_id}"
    try:
        computed = plan_hash(Plan.model_validate(plan.body))
    except ValidationError:
        computed = None
    if computed != plan.plan_hash:
        yield f"{where}: its stored body does not hash to its plan hash: it was changed"
    elif recorded.plans.get(plan.plan_id) != plan.plan_hash:
        yield f"{where}: the audit log records no such plan with this hash"
    editor = recorded.editors.get(plan.plan_id)
    edited = plan.planner.startswith(EDIT_PREFIX)
    shown_editor = plan.planner.removeprefix(EDIT_PREFIX) if edited else None
    if shown_editor != editor:
        said = "a planner's" if editor is None else f"an edit by {editor!r}"
        yield f"{where} shows {plan.planner!r} as its author, but the audit log records {said}"


def _step_problems(step: StepRunRow, recorded: Recorded) -> Iterator[str]:
    where = f"step {step.step_id} of plan {step.plan_id}"
    entry = recorded.steps.get((step.plan_id, step.step_id))
    if entry is None:
        # A claim is recorded with the goal's move and its end may be on its way (`running`),
        # and releases before 0014 left `unknown` rows unaudited; a `pending` one is a write
        # settled as not happened, to be called again (the settle's entry ends what was
        # recorded of it); any other status is written with its entry. A result inserted in
        # SQL was taken by the run as the step's answer.
        if step.status not in ("running", "unknown", "pending"):
            yield (
                f"{where} shows {step.status!r}, but its audit log records no end of it: the "
                "row was added outside plangate"
            )
        return
    if entry["status"] != step.status:
        yield f"{where} shows {step.status!r}, but its audit log last recorded {entry['status']!r}"
    if "tool" in entry and entry["tool"] != step.tool:
        yield f"{where} shows the tool {step.tool!r}, but its audit log recorded {entry['tool']!r}"
    if "error" in entry and not shown_as_recorded(step.error, entry["error"]):
        yield f"{where} shows an error other than the one its audit entry recorded"
    digest = entry.get("output_sha256")
    if digest is not None and digest != output_digest(step.output):
        yield f"{where}: its stored output is not the one its audit entry recorded"
    if (at := other_time(step.finished_at, entry)) is not None:
        yield (
            f"{where} shows it ended at {_shown_time(step.finished_at)}, but its audit log "
            f"records its end at {at}: the row was changed"
        )


def _shown_time(moment: datetime | None) -> str:
    """Return a row's time as the log's are said (UTC, ISO 8601)."""
    if moment is None:
        return "no time"
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
