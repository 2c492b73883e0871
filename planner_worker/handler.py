"""The planner stage's handler: goals in, validated plan revisions (or clear failures) out.

`goal.submitted` makes revision 1. `plan.rejected` (and `execution.failed`, when configured)
makes revision n+1 from that feedback, if the planner takes feedback and the replan policy
allows it. Idempotent on redelivery: a goal or feedback already answered gets the same answer
again, and the store's unique (goal, revision) keeps two deliveries from making two revisions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from functools import partial

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plangate import telemetry
from plangate.bus import Delivery, Envelope
from plangate.catalog import read_offered_catalog
from plangate.errors import InputInvalid, NotReady, PlanningFailed, Reject, Retry
from plangate.event_keys import refuse_reserved
from plangate.store import GoalRow, PlanRow, Store
from plangate.store.goals import (
    check_same_goal,
    ensure_goal,
    get_goal,
    goal_status,
    latest_plan,
    newest_plan,
    plan_of,
)
from plangate.store.outbox import emit
from planner_worker.answers import failure_of, proposal_of, store_failure, store_proposal
from planner_worker.numbered_plan import validated_plan
from planner_worker.planner import Draft, Feedback, Planner, RevisingPlanner
from planner_worker.replan import FeedbackSource, ReplanPolicy, UnheardFailures
from schemas import (
    Catalog,
    ExecutionFailed,
    GoalSubmitted,
    Message,
    Plan,
    PlanDecided,
    utcnow,
)

Writing = Callable[[], AbstractContextManager[Session]]  # opens a writing transaction
log = logging.getLogger(__name__)
_AWAITING_FEEDBACK: dict[FeedbackSource, str] = {"reviewer": "rejected", "execution": "failed"}


class _GoalMoved(Exception):
    """The goal no longer waits for the revision planned outside the lock."""


class PlannerHandler:
    """Turns each goal into validated plan revisions, or a failure that says why."""

    def __init__(
        self,
        store: Store,
        planner: Planner,
        replan: ReplanPolicy | None = None,
        lease: timedelta | None = timedelta(minutes=10),
        catalog: Callable[[Session], Catalog] = read_offered_catalog,
    ) -> None:
        self._store = store
        self._planner = planner
        # The tools to plan with: what executors published to the store, or (embedded) exactly
        # the tools this process loaded.
        self._catalog = catalog
        self._replan = replan or ReplanPolicy()
        # Longer than planning can take, retries and repairs included; None for a planner that
        # plans without I/O (it plans inside the goal's transaction instead).
        self._lease = lease
        # A failed run answered by no revision is said (ReplanPolicy alone does nothing then).
        self._unheard = UnheardFailures(self._replan, planner)

    def __call__(self, message: Message, delivery: Delivery) -> Sequence[Envelope]:
        """Handle goal.submitted, plan.rejected or execution.failed."""
        if isinstance(message, GoalSubmitted):
            return self._on_goal(message, delivery)
        if isinstance(message, PlanDecided) and message.type == "plan.rejected":
            return self._on_feedback(message, message.decision.reason, "reviewer")
        if isinstance(message, ExecutionFailed):
            return self._on_feedback(message, message.reason, "execution")
        raise Reject(f"the planner does not handle {type(message).__name__}")

    def _on_goal(self, message: GoalSubmitted, delivery: Delivery) -> Sequence[Envelope]:
        if self._lease is None and self._store.serialises_writes:
            # Planning without I/O needs no lease. A goal waiting for its plan is read, and
            # planned, outside SQLite's write lock (which every writer of every process waits
            # for); the plan is stored only if the goal still waits for that revision.
            with self._store.reading() as session:
                check_same_goal(session, message)
                ready = self._ready_to_plan(session, message.goal_id)
            if ready is not None:
                catalog, revision = ready
                still_waiting = partial(self._still_waiting, message.goal_id, revision)
                try:
                    return self._first_revision(message, catalog, revision, writing=still_waiting)
                except _GoalMoved:
                    pass  # cancelled, planned or retried meanwhile: answered the whole way
        with self._store.session() as session:
            goal = goal_status(session, message.goal_id)
            if goal is None:  # published raw, not by a client: stored at first sight
                _refuse_reserved_key(message)
                ensure_goal(session, message, delivery.headers)
                goal = goal_status(session, message.goal_id)
                assert goal is not None
            else:
                check_same_goal(session, message)
            if goal.status == "cancelled":
                return []  # an operator stopped it: nothing more is planned
            existing = newest_plan(session, message.goal_id)
            if existing is not None and goal.status != "submitted":
                # A redelivery: already planned.
                return [emit(session, proposal_of(session.get_one(PlanRow, existing.plan_id)))]
            # Submitted with plans already: an operator's retry (plangate/goal_retry.py).
            revision = 1 if existing is None else existing.revision + 1
            if goal.status == "plan_failed":
                return [emit(session, failure_of(message.goal_id, goal.status_reason))]
            catalog = _catalog_in(session, self._catalog)
            if self._lease is None:  # planned without I/O: in this transaction
                return self._first_revision(message, catalog, revision, session)
            self._take_lease(session, message.goal_id)
        with self._leased(message.goal_id):
            return self._first_revision(message, catalog, revision)

    def _ready_to_plan(self, session: Session, goal_id: str) -> tuple[Catalog, int] | None:
        """Return the tools and the revision to plan, if the goal waits for a plan; else None.

        None also for a goal not stored yet, or already answered: those go the whole way.
        """
        goal = goal_status(session, goal_id)
        if goal is None or goal.status != "submitted":
            return None
        existing = newest_plan(session, goal_id)  # plans already: an operator's retry
        revision = 1 if existing is None else existing.revision + 1
        return _catalog_in(session, self._catalog), revision

    @contextmanager
    def _still_waiting(self, goal_id: str, revision: int) -> Iterator[Session]:
        """Open a writing transaction in which the goal still waits for `revision`.

        Raises _GoalMoved (nothing written) when it no longer does: cancelled, planned by a
        second delivery, failed, or retried again since it was read.
        """
        with self._store.session() as session:
            goal = goal_status(session, goal_id, lock=True)
            newest = newest_plan(session, goal_id)
            newest_revision = newest.revision if newest is not None else 0
            if goal is None or goal.status != "submitted" or newest_revision != revision - 1:
                raise _GoalMoved
            yield session

    def _first_revision(
        self,
        message: GoalSubmitted,
        catalog: Catalog,
        revision: int = 1,
        session: Session | None = None,
        writing: Writing | None = None,
    ) -> Sequence[Envelope]:
        """Plan from the goal alone and store the plan (or the failure).

        Revision 1, or the next one after an operator's retry; in `session`, or in a new
        transaction (`writing`'s, if given).
        """
        with telemetry.tracer().start_as_current_span("plan") as span:
            span.set_attribute("gen_ai.operation.name", "plan")
            span.set_attribute("plangate.goal_id", message.goal_id)
            span.set_attribute("plangate.revision", revision)
            try:
                draft = self._planner.draft(message, catalog)
                plan = validated_plan(draft, message.goal_id, revision, catalog)
            except PlanningFailed as failure:
                span.set_attribute("error.type", "planning_failed")
                if failure.model_server:  # an outage for an operator, not a goal's wording
                    log.warning("goal %s not planned: %s", message.goal_id, failure)
                return self._fail(message.goal_id, failure.reasons, session, writing)
            # Inside the span: the gate and executor continue the trace under `plan`.
            return self._propose(plan, draft, session, writing)

    def _on_feedback(
        self, message: PlanDecided | ExecutionFailed, comment: str, source: FeedbackSource
    ) -> Sequence[Envelope]:
        """Make the next revision from feedback on the message's plan, when that is allowed.

        Feedback the store cannot place is refused (a dead letter saying why) even when it
        would revise nothing: acked in silence, a forged one left no trace.
        """
        planner = self._planner if isinstance(self._planner, RevisingPlanner) else None
        with self._store.session() as session:
            row = _plan_fed_back(session, message)
            if not self._replan.allows(1, source):
                return []  # nothing to do; the message is acknowledged
            goal = get_goal(session, row.goal_id)
            if planner is None:
                # Only of a run that did fail: a forged failure of a running goal said one had.
                if goal.status == _AWAITING_FEEDBACK[source]:
                    self._unheard.say(row.plan_id, source)
                return []
            newest = latest_plan(session, row.goal_id)
            assert newest is not None  # `row` itself is one of the goal's plans
            if newest.revision == row.revision + 1:  # a redelivery: this feedback was answered
                return [emit(session, proposal_of(newest))]
            if newest.revision > row.revision or not self._replan.allows(row.revision, source):
                return []
            if goal.status == "plan_failed":  # revising after this feedback failed before
                return [emit(session, failure_of(goal.id, goal.status_reason))]
            if goal.status != _AWAITING_FEEDBACK[source]:
                return []  # the goal moved on (another decision, a newer run): leave it
            request = GoalSubmitted(goal_id=goal.id, text=goal.text, metadata=dict(goal.meta))
            feedback = Feedback(plan_of(row), comment, source, _tokens_spent(session, goal.id))
            catalog = _catalog_in(session, self._catalog)
            if self._lease is None:
                return self._revise(planner, request, catalog, feedback, session)
            self._take_lease(session, goal.id)
        with self._leased(goal.id):
            return self._revise(planner, request, catalog, feedback)

    def _take_lease(self, session: Session, goal_id: str) -> None:
        """Claim the planning of a goal; Retry once another planner's lease has run out.

        The other planner publishes the plan (the retry then finds it); if it died, the retry
        plans. Taken with one conditional UPDATE, so two planners cannot both take it.
        """
        assert self._lease is not None  # taken only by a planner that plans with I/O
        now = utcnow()
        free = or_(GoalRow.planning_until.is_(None), GoalRow.planning_until <= now)
        taken = session.execute(
            update(GoalRow)
            .where(GoalRow.id == goal_id, free)
            .values(planning_until=now + self._lease)
            .execution_options(synchronize_session=False)
        )
        if getattr(taken, "rowcount", 0) != 1:
            until = session.scalar(select(GoalRow.planning_until).where(GoalRow.id == goal_id))
            wait = (until - now).total_seconds() if until is not None else 1.0
            raise Retry(f"goal {goal_id} is being planned by another planner", delay=max(1.0, wait))

    @contextmanager
    def _leased(self, goal_id: str) -> Iterator[None]:
        """Give the lease back if planning stops on an error, so a retry need not wait it out."""
        try:
            yield
        except BaseException:
            try:
                with self._store.session() as session:
                    session.execute(
                        update(GoalRow).where(GoalRow.id == goal_id).values(planning_until=None)
                    )
            except Exception:  # the lease then simply runs out
                log.warning("could not release the planning lease of %s", goal_id, exc_info=True)
            raise

    def _revise(
        self,
        planner: RevisingPlanner,
        goal: GoalSubmitted,
        catalog: Catalog,
        feedback: Feedback,
        session: Session | None = None,
    ) -> Sequence[Envelope]:
        revision = feedback.previous.revision + 1
        with telemetry.tracer().start_as_current_span("plan") as span:
            span.set_attribute("gen_ai.operation.name", "plan")
            span.set_attribute("plangate.goal_id", goal.goal_id)
            span.set_attribute("plangate.revision", revision)
            span.set_attribute("plangate.feedback.source", feedback.source)
            try:
                draft = planner.revise(goal, catalog, feedback)
                plan = validated_plan(draft, goal.goal_id, revision, catalog)
            except PlanningFailed as failure:
                span.set_attribute("error.type", "planning_failed")
                what = "rejection" if feedback.source == "reviewer" else "failed execution"
                reasons = [f"no revision {revision} after the {what}:", *failure.reasons]
                return self._fail(goal.goal_id, reasons, session)
            return self._propose(plan, draft, session)

    def _propose(
        self,
        plan: Plan,
        draft: Draft,
        session: Session | None = None,
        writing: Writing | None = None,
    ) -> Sequence[Envelope]:
        """Store a new revision and emit plan.proposed, in `session` or a new transaction."""
        if session is not None:
            # A race with another delivery (PostgreSQL) fails this transaction; the retry of
            # the message then finds the other's plan and proposes it.
            return store_proposal(session, plan, draft)
        try:
            with (writing or self._store.session)() as own:
                return store_proposal(own, plan, draft)
        except IntegrityError:
            # Two deliveries of one goal (or one piece of feedback) planned at once; the
            # other stored this revision first. Its plan is the answer, ours is dropped.
            with self._store.session() as own:
                existing = own.execute(
                    select(PlanRow).where(
                        PlanRow.goal_id == plan.goal_id, PlanRow.revision == plan.revision
                    )
                ).scalar_one()
                return [emit(own, proposal_of(existing))]

    def _fail(
        self,
        goal_id: str,
        reasons: list[str],
        session: Session | None = None,
        writing: Writing | None = None,
    ) -> Sequence[Envelope]:
        if session is not None:
            return store_failure(session, goal_id, reasons)
        with (writing or self._store.session)() as own:
            return store_failure(own, goal_id, reasons)


def _refuse_reserved_key(message: GoalSubmitted) -> None:
    """Refuse a raw goal whose key is a CloudEvent's (Reject: a dead letter).

    `serve` stores an event's goal before it publishes it, so one not stored is someone else's
    message: stored, it took the event's key, and the event was answered with that goal.
    """
    try:
        refuse_reserved(message.idempotency_key)
    except InputInvalid as exc:
        raise Reject(f"{exc} (published on the broker, not by `serve`)") from exc


def _plan_fed_back(session: Session, message: PlanDecided | ExecutionFailed) -> PlanRow:
    """Return the plan feedback is about; Reject feedback naming no stored plan of its goal."""
    row = session.get(PlanRow, message.plan_id)
    if row is None:
        raise Reject(f"{message.type} names plan {message.plan_id!r}, which is not in the store")
    if row.goal_id != message.goal_id:  # as the executor refuses another goal's plan
        raise Reject(f"{message.type} for goal {message.goal_id!r} names another goal's plan")
    return row


def _catalog_in(session: Session, source: Callable[[Session], Catalog]) -> Catalog:
    """Return the tool catalog, read in the caller's transaction; NotReady while empty."""
    catalog = source(session)
    if not catalog:
        # Executors may still be starting: wait for them rather than fail the goal.
        raise NotReady("no executor has published its tools yet; start an executor")
    return catalog


def _tokens_spent(session: Session, goal_id: str) -> int:
    """LLM tokens every stored revision of the goal took (its budget spans them all)."""
    total = session.execute(
        select(
            func.coalesce(func.sum(PlanRow.input_tokens), 0)
            + func.coalesce(func.sum(PlanRow.output_tokens), 0)
        ).where(PlanRow.goal_id == goal_id)
    ).scalar_one()
    return int(total or 0)
