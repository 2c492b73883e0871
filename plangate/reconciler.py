"""The reconciler: no goal depends on the broker keeping a message.

A goal left in a non-terminal state past its deadline gets its last message published again;
idempotent handlers answer it with what they already did, or do what was lost. A held goal
waits for a person and is left alone. A running goal is left alone while a step holds a live
claim, and, since reads take no claim, until a step lease has passed since its run last showed
life (it started, or a step started or finished): a dead executor's run is taken over then,
as a dead executor's write is.

A resend is recorded apart from the goal's activity (a count and an audit entry, never its
`updated_at`), so a resend never reads as a sign of life. A goal whose message is most likely
still queued (its stage has a backlog, and has not yet taken messages made after it) waits for
it, up to `BACKLOG_PATIENCE` deadlines: resending into a backlog only makes it longer. One whose
stage has moved past it lost its message, and is resent.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, or_, select, tuple_, update
from sqlalchemy.orm import Session

from plangate import metrics, telemetry
from plangate.bus import Envelope, Stage
from plangate.errors import describe
from plangate.store import ApprovalRow, DecisionRow, GoalRow, PlanRow, StepRunRow, Store, audit
from plangate.store.goals import latest_plan, plan_of
from plangate.store.outbox import delayed_retries, emit
from schemas import (
    GoalSubmitted,
    PlanApproved,
    PlanProposed,
    ReviewDecided,
    SignedEnvelope,
    utcnow,
)
from schemas.goal_states import STALLED_WHEN_IDLE
from schemas.routing import consuming_stage

log = logging.getLogger(__name__)

# The message a goal waits on in each state until a stage has handled it; the stage's queue
# holds it meanwhile (`schemas.routing`). A running goal's message is with an executor already.
_AWAITED: dict[str, str] = {
    "submitted": "goal.submitted",
    "proposed": "plan.proposed",
    "approved": "plan.approved",
}
_UNSIGNED_APPROVAL = "review.decided"  # a person's approval, waiting for the gate to sign it
MAX_DOUBLINGS = 6
MAX_PAGES = 10  # pages of candidates one sweep looks at
BACKLOG_PATIENCE = 64  # deadlines a goal waits behind its stage's backlog before a resend
# A message is made a moment before or after its goal's row changes, on hosts whose clocks
# differ a little: "taken well after" means later than this.
_CLOCK_MARGIN = timedelta(seconds=1)


def due_after(after: timedelta, resends: int) -> timedelta:
    """Return how long after its last activity a goal resent `resends` times is due again.

    The gaps double after each resend, up to 64x `after`: due at 1x, 3x, 7x, 15x ... `after`.
    """
    doubled = min(resends, MAX_DOUBLINGS)
    longest_gap = after * (1 << MAX_DOUBLINGS)
    return after * ((1 << (doubled + 1)) - 1) + longest_gap * (resends - doubled)


class RecentlyHeld:
    """When a consumer was last seen holding each goal's message, over the sweeps.

    A goal held now or within the last deadline is left alone: a dead worker's message is
    restored to the front of its queue between two sweeps and taken a moment later; in that
    moment it is neither held nor new, and would look lost. A goal held earlier had its message
    handed back or published again (a retry waiting out an outage) no earlier than it was last
    seen held: the reconciler compares from then on, as for a resend. Forgotten after
    `BACKLOG_PATIENCE` deadlines, as long as any message is waited for.
    """

    def __init__(self, window: timedelta) -> None:
        self._window = window
        self._seen: OrderedDict[str, datetime] = OrderedDict()

    def update(self, held: Collection[str]) -> dict[str, datetime]:
        """Note the goals held now; return when each goal still remembered was last held."""
        now = utcnow()
        for goal_id in held:
            self._seen[goal_id] = now
            self._seen.move_to_end(goal_id)
        forget_before = now - self._window * BACKLOG_PATIENCE
        while self._seen and next(iter(self._seen.values())) < forget_before:
            self._seen.popitem(last=False)
        return dict(self._seen)


def reconcile(
    store: Store,
    after: timedelta,
    limit: int = 100,
    step_lease: timedelta = timedelta(minutes=5),
    waiting: Mapping[Stage, int] | None = None,
    progress: Mapping[str, datetime] | None = None,
    held: Mapping[str, datetime] | None = None,
) -> list[Envelope]:
    """Queue the last message of every goal stalled past its deadline; return the envelopes.

    `waiting` is how many messages each stage's queue holds (as the broker reports it), and
    `progress` the newest message each stage has taken: a goal whose message is most likely
    still queued behind a backlog is left to it for a while (see `_queued`). `held` says when a
    consumer was last seen holding a goal's message unacked (`RecentlyHeld`): held within the
    deadline, it is being handled or coming back by itself. Neither those nor goals with a
    delayed retry waiting in the outbox are resent; a goal whose message was sent again
    (retried, resent, held and handed back) is compared from that time on.
    """
    now = utcnow()
    envelopes: list[Envelope] = []
    with store.session() as session:
        # Page on (updated_at, id): goals skipped below (live runs, backlogs) stay oldest, and
        # must not hide newer ones that lost their message.
        cursor: tuple[datetime, str] | None = None
        retries = delayed_retries(session, since=now - after * BACKLOG_PATIENCE)
        for _ in range(MAX_PAGES):
            query = (
                select(GoalRow)
                .where(GoalRow.status.in_(STALLED_WHEN_IDLE), _due(now, after))
                .order_by(GoalRow.updated_at, GoalRow.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            if cursor is not None:
                query = query.where(tuple_(GoalRow.updated_at, GoalRow.id) > cursor)
            page = list(session.execute(query).scalars())
            for goal in page:
                # Its message is being handled, comes back by itself, or waits as a retry.
                last_held = (held or {}).get(goal.id)
                if last_held is not None and last_held > now - after:
                    continue
                if goal.id in retries and retries[goal.id] is None:
                    continue
                sent = _last_sent(goal, retries.get(goal.id), last_held)
                envelope = _resend_if_stalled(
                    session, goal, now, after, step_lease, waiting, progress, sent
                )
                if envelope is not None:
                    envelopes.append(envelope)
            if len(page) < limit or len(envelopes) >= limit:
                break
            cursor = (page[-1].updated_at, page[-1].id)
    return envelopes


def _resend_if_stalled(
    session: Session,
    goal: GoalRow,
    now: datetime,
    after: timedelta,
    step_lease: timedelta,
    waiting: Mapping[Stage, int] | None,
    progress: Mapping[str, datetime] | None,
    sent: datetime,
) -> Envelope | None:
    """Return the goal's last message, counted as a resend, if it is stalled; else None.

    `sent` is when the goal's message last went to its queue (`_last_sent`).
    """
    if now - goal.updated_at < due_after(after, goal.reconciled):
        return None  # resent more often than SQL tells apart (see `_due`), not due yet
    if goal.planning_until is not None and goal.planning_until > now:
        return None  # a planner is on it (a slow LLM): resending would pay for it twice
    stage = _waits_in(session, goal)
    queued = stage is not None and _queued(sent, stage, waiting or {}, progress or {}, after)
    if queued and sent > now - after * BACKLOG_PATIENCE:
        return None
    try:
        envelope = _last_message(session, goal, step_lease)
    except ValidationError as exc:  # kept before a rule got stricter: one goal, not the sweep
        log.error(
            "goal %s stalled while %s, and cannot be sent again: what the store keeps of it "
            "is no valid message now (%s); cancel it, or submit it again",
            goal.id,
            goal.status,
            describe(exc),
        )
        return None
    if envelope is not None:
        _count_resend(session, goal, envelope)
    return envelope


def _waits_in(session: Session, goal: GoalRow) -> Stage | None:
    """Return the stage whose queue holds the goal's last message while it waits."""
    awaited = _AWAITED.get(goal.status)
    if awaited == "plan.approved" and not _signed(session, goal.id):
        awaited = _UNSIGNED_APPROVAL
    return None if awaited is None else consuming_stage(awaited)


def _signed(session: Session, goal_id: str) -> bool:
    plan = latest_plan(session, goal_id)
    if plan is None:
        return False
    issued = select(ApprovalRow.approval_id).where(ApprovalRow.plan_id == plan.plan_id)
    return session.execute(issued).first() is not None


def _last_sent(goal: GoalRow, *republished: datetime | None) -> datetime:
    """Return when the goal's message last joined the back of its queue.

    Its last change (a message sent with it), its last resend, or when it was last sent again
    (a delayed retry; a held message handed back), whichever came last: a queue hands out
    messages in the order they were published.
    """
    times = (goal.updated_at, goal.resent_at, *republished)
    return max(t for t in times if t is not None)


def _queued(
    sent: datetime,
    stage: Stage,
    waiting: Mapping[Stage, int],
    progress: Mapping[str, datetime],
    after: timedelta,
) -> bool:
    """Return whether the goal's last message is most likely still in its stage's queue.

    Not if the queue is empty; nor once the stage has taken messages published a deadline
    after it (a queue hands messages out in order: ours was passed over, so it was lost; a
    shorter lead is a message still being handled beside newer ones).
    """
    if not waiting.get(stage, 0):
        return False
    taken = progress.get(stage)
    return taken is None or taken <= sent + max(_CLOCK_MARGIN, after)


def _due(now: datetime, after: timedelta) -> ColumnElement[bool]:
    """Return the condition of a goal past its deadline, in SQL (any database).

    Exact up to MAX_DOUBLINGS resends; beyond, a goal is a candidate and checked in Python.
    """
    cases = [
        and_(GoalRow.reconciled == n, GoalRow.updated_at < now - due_after(after, n))
        for n in range(MAX_DOUBLINGS)
    ]
    last = due_after(after, MAX_DOUBLINGS)
    cases.append(and_(GoalRow.reconciled >= MAX_DOUBLINGS, GoalRow.updated_at < now - last))
    return or_(*cases)


def _count_resend(session: Session, goal: GoalRow, envelope: Envelope) -> None:
    """Record a resend without touching `updated_at`: a resend is no sign of the goal's life."""
    # The goal's own fields, as its moves are logged: an operator greps one goal's lines.
    fields = {"goal_id": goal.id}
    trace_id = telemetry.trace_id_of(goal.trace_headers or {})
    if trace_id is not None:
        fields["trace_id"] = trace_id
    log.warning(
        "goal %s stalled while %s; sending its last message again",
        goal.id,
        goal.status,
        extra=fields,
    )
    metrics.RESENDS.inc()
    session.execute(
        update(GoalRow)
        .where(GoalRow.id == goal.id)
        .values(
            reconciled=GoalRow.reconciled + 1, resent_at=utcnow(), updated_at=GoalRow.updated_at
        )
        .execution_options(synchronize_session=False)
    )
    data = {"status": goal.status, "message": envelope.routing_key, "resend": goal.reconciled + 1}
    audit.append(session, "goal.resent", actor="reconciler", goal_id=goal.id, data=data)


def _last_message(session: Session, goal: GoalRow, step_lease: timedelta) -> Envelope | None:
    if goal.status == "submitted":
        message = GoalSubmitted(
            goal_id=goal.id,
            text=goal.text,
            metadata={str(k): str(v) for k, v in goal.meta.items()},
            idempotency_key=goal.idempotency_key or None,  # "" was taken before it was refused
        )
        return emit(session, message, trace_headers=goal.trace_headers)
    plan = latest_plan(session, goal.id)
    if plan is None:
        return None
    if goal.status == "proposed":
        proposal = PlanProposed(
            goal_id=goal.id, plan=plan_of(plan), plan_hash=plan.plan_hash, planner=plan.planner
        )
        return emit(session, proposal, trace_headers=goal.trace_headers)
    if _run_in_progress(session, goal, plan.plan_id, step_lease):
        return None
    approval = session.execute(
        select(ApprovalRow).where(ApprovalRow.plan_id == plan.plan_id)
    ).scalar_one_or_none()
    if approval is None:
        return _unsigned_review(session, goal, plan)
    released = PlanApproved(
        goal_id=goal.id,
        plan=plan_of(plan),
        approval=SignedEnvelope.model_validate(approval.envelope),
    )
    return emit(session, released, trace_headers=goal.trace_headers)


def _unsigned_review(session: Session, goal: GoalRow, plan: PlanRow) -> Envelope | None:
    """Hand a person's approval that no gate has signed yet to the gate again."""
    decided = session.execute(
        select(DecisionRow).where(
            DecisionRow.plan_id == plan.plan_id,
            DecisionRow.stage == "human",
            DecisionRow.action == "approve",
        )
    ).scalar_one_or_none()
    if goal.status != "approved" or decided is None:
        return None
    message = ReviewDecided(
        goal_id=goal.id,
        plan_id=plan.plan_id,
        revision=plan.revision,
        plan_hash=plan.plan_hash,
        decided_by=decided.decided_by,
    )
    return emit(session, message, trace_headers=goal.trace_headers)


def _run_in_progress(session: Session, goal: GoalRow, plan_id: str, step_lease: timedelta) -> bool:
    """Return True while a step holds a live claim, or a running goal's run showed life lately."""
    now = utcnow()
    steps = session.execute(
        select(
            StepRunRow.status, StepRunRow.lease_until, StepRunRow.started_at, StepRunRow.finished_at
        ).where(StepRunRow.plan_id == plan_id)
    ).all()
    if any(s.status == "running" and s.lease_until and s.lease_until > now for s in steps):
        return True
    if goal.status != "running":
        return False
    # A read in flight leaves no row: the run's last sign of life stands in for its lease.
    signs = [goal.updated_at, *(s.started_at for s in steps), *(s.finished_at for s in steps)]
    return bool(max(sign for sign in signs if sign is not None) > now - step_lease)
