"""Replay a candidate policy over the plans the store recorded, to see what it would change.

Before a policy goes live, its authors see which of last week's decisions it would have made
differently (approve -> hold, hold -> deny, or a hold asking other roles or approvals: hold ->
hold (role finance, 2 approvals)). Read-only: it opens no transaction that writes, and nothing
it decides is recorded, signed or sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, tuple_
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
    progress: Callable[[int, int], None] | None = None,
) -> BacktestReport:
    """Decide every recorded plan (from `since`, oldest `limit`) with `candidate`; compare.

    Read a batch at a time, each in a transaction that only reads: a backtest of a year's plans
    takes minutes, and in a writing one it held SQLite's write lock, every worker's, as long.
    `progress` is told how many plans were replayed, of how many there are.
    """
    report = BacktestReport()
    total = _count(store, since, limit) if progress is not None else 0
    for session, batch in _recorded(store, since, limit):
        for plan, goal, recorded in batch:
            _replay(session, candidate, catalog, report, (plan, goal, recorded))
        if progress is not None:
            progress(report.replayed, max(report.replayed, total))
    return report


def _replay(
    session: Session,
    candidate: Policy,
    catalog: Mapping[str, ToolSpec],
    report: BacktestReport,
    recorded_plan: tuple[Plan, GoalRow, DecisionRow],
) -> None:
    """Decide one recorded plan with `candidate`; note it in `report` if the decision changes."""
    plan, goal, recorded = recorded_plan
    meta = {str(k): str(v) for k, v in goal.meta.items()}
    # Limits over history count what was approved when it was decided, not since.
    history = (
        History(session, plan, meta, as_of=recorded.created_at) if candidate.reads_history else None
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


def _recorded_terms(hold: HoldRow) -> str:
    """Say what the recorded hold asked, as `HoldTerms.said` says a candidate's."""
    terms = HoldTerms(
        roles=tuple(sorted(hold.required_roles or [])),
        approvals=hold.approvals_required,
        approver_not_submitter=hold.approver_not_submitter,
    )
    return terms.said()


Recorded = list[tuple[Plan, GoalRow, DecisionRow]]


def _recorded(
    store: Store, since: datetime | None, limit: int | None
) -> Iterator[tuple[Session, Recorded]]:
    """Yield each batch of decided plans (each by its first policy decision), oldest first.

    A batch comes with the reading transaction it was read in, open until the next is asked
    for. Each batch starts after the last row of the one before (not at an OFFSET, which
    skipped over every row before it again: a year of plans took hours). A plan decided again
    (a resend) has its decisions next to each other in this order: its first one counts.
    """
    order = (PlanRow.created_at, PlanRow.plan_id, DecisionRow.id)
    query = (
        select(PlanRow, GoalRow, DecisionRow)
        .join(GoalRow, GoalRow.id == PlanRow.goal_id)
        .join(DecisionRow, DecisionRow.plan_id == PlanRow.plan_id)
        .where(DecisionRow.stage == "policy")
        .order_by(*order)
        .limit(_BATCH)
    )
    if since is not None:
        query = query.where(PlanRow.created_at >= since)
    after: tuple[datetime, str, int] | None = None
    last_plan, count = "", 0
    while limit is None or count < limit:
        with store.reading() as session:
            page = query if after is None else query.where(tuple_(*order) > after)
            rows = session.execute(page).all()
            if not rows:
                return
            batch: Recorded = []
            for plan_row, goal, decision in rows:
                if plan_row.plan_id != last_plan and (limit is None or count < limit):
                    last_plan, count = plan_row.plan_id, count + 1
                    batch.append((Plan.model_validate(plan_row.body), goal, decision))
            last_row, _, last_decision = rows[-1]
            after = (last_row.created_at, last_row.plan_id, last_decision.id)
            yield session, batch


def _count(store: Store, since: datetime | None, limit: int | None) -> int:
    """Return how many plans a backtest replays (for its progress)."""
    query = (
        select(func.count(func.distinct(DecisionRow.plan_id)))
        .join(PlanRow, PlanRow.plan_id == DecisionRow.plan_id)
        .where(DecisionRow.stage == "policy")
    )
    if since is not None:
        query = query.where(PlanRow.created_at >= since)
    with store.reading() as session:
        found = int(session.execute(query).scalar_one())
    return found if limit is None else min(found, limit)
