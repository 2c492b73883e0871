"""Replay a candidate policy over the plans the store recorded, to see what it would change.

Before a policy goes live, its authors see which of last week's decisions it would have made
differently (approve -> hold, hold -> deny, or a hold asking other roles or approvals: hold ->
hold (role finance, 2 approvals)). Read-only: it opens no transaction that writes, and nothing
it decides is recorded, signed or sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from approval_gate.history import History
from approval_gate.policy import HoldTerms, Policy
from plangate.store import DecisionRow, GoalRow, HoldRow, PlanRow, Store
from schemas import Plan, ToolSpec

_BATCH = 200


@dataclass(frozen=True)
class Change:
    """A plan the candidate would decide otherwise than the policy of record did."""

    goal_id: str
    plan_id: str
    was: str
    now: str
    rule_was: str | None
    rule_now: str | None
    reason_now: str


@dataclass
class BacktestReport:
    """How many recorded decisions were replayed, and those that would change."""

    replayed: int = 0
    changes: list[Change] = field(default_factory=list)

    @property
    def shifts(self) -> Counter[str]:
        """Return the changes counted by their direction, as `approve -> hold`."""
        return Counter(f"{change.was} -> {change.now}" for change in self.changes)


def backtest(
    store: Store,
    candidate: Policy,
    catalog: Mapping[str, ToolSpec],
    since: datetime | None = None,
    limit: int | None = None,
) -> BacktestReport:
    """Decide every recorded plan (from `since`, newest `limit`) with `candidate`; compare."""
    report = BacktestReport()
    with store.session() as session:
        for plan, goal, recorded in _recorded(session, since, limit):
            meta = {str(k): str(v) for k, v in goal.meta.items()}
            # Limits over history count what was approved when it was decided, not since.
            history = (
                History(session, plan, meta, as_of=recorded.created_at)
                if candidate.reads_history
                else None
            )
            decision = candidate.decide_as_gate(plan, catalog, goal.text, meta, history)
            report.replayed += 1
            was, now = str(recorded.action), str(decision.action)
            hold = session.get(HoldRow, plan.plan_id) if was == now == "hold" else None
            if hold is not None:  # who may release it is part of the decision (if recorded)
                was += _recorded_terms(hold)
                now += candidate.hold_terms(decision).said()
            if was != now:
                change = Change(
                    goal.id, plan.plan_id, was, now, recorded.rule, decision.rule, decision.reason
                )
                report.changes.append(change)
    return report


def _recorded_terms(hold: HoldRow) -> str:
    """Say what the recorded hold asked, as `HoldTerms.said` says a candidate's."""
    terms = HoldTerms(
        roles=tuple(sorted(hold.required_roles or [])),
        approvals=hold.approvals_required,
        approver_not_submitter=hold.approver_not_submitter,
    )
    return terms.said()


def _recorded(
    session: Session, since: datetime | None, limit: int | None
) -> Iterator[tuple[Plan, GoalRow, DecisionRow]]:
    """Yield each plan the policy decided (its first decision), oldest first, in batches."""
    query = (
        select(PlanRow, GoalRow, DecisionRow)
        .join(GoalRow, GoalRow.id == PlanRow.goal_id)
        .join(DecisionRow, DecisionRow.plan_id == PlanRow.plan_id)
        .where(DecisionRow.stage == "policy")
        .order_by(PlanRow.created_at, PlanRow.plan_id, DecisionRow.id)
    )
    if since is not None:
        query = query.where(PlanRow.created_at >= since)
    seen: set[str] = set()
    offset = 0
    while limit is None or len(seen) < limit:
        rows = session.execute(query.offset(offset).limit(_BATCH)).all()
        if not rows:
            return
        offset += len(rows)
        for plan_row, goal, decision in rows:
            if plan_row.plan_id in seen:
                continue  # a plan decided again (a resend): its first decision counts
            seen.add(plan_row.plan_id)
            yield Plan.model_validate(plan_row.body), goal, decision
            if limit is not None and len(seen) >= limit:
                return
