"""The executor stage's handler: plan.approved in; steps run; execution.completed/failed out.

It also answers the gate's plan.preview_requested with a dry run (see `preview`).

Before any tool is called: the plan is validated against this executor's own tools, the
approval's signature, plan hash and expiry are checked, and the approval is recorded as used
(a unique key: one approval, one plan). A redelivered message resumes the same run; finished
steps are not run again, and a run that already ended has its outcome republished, unchanged.
An executor that stops hands its runs back between steps (`draining`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from executor_worker.draining import Draining, hand_back
from executor_worker.engine import DEFAULT_TOOL_TIMEOUT, StepOutcome
from executor_worker.lacking_tools import hand_back_if_lacking
from executor_worker.ledger import Claim, StepLedger, recorded_steps
from executor_worker.plan_run import PlanRun
from executor_worker.preview import Previewer
from executor_worker.run_end import ACTOR, end_run, outcome_of
from executor_worker.run_span import Resumption, mark_outcome, unsaid
from plangate import telemetry
from plangate.bus import Delivery, Envelope
from plangate.errors import ApprovalInvalid, BrokerUnavailable, Reject, Retry, UnknownSigner
from plangate.signing import TrustedKeys, ensure_unexpired
from plangate.store import (
    TERMINAL_STATUSES,
    ApprovalRow,
    ApprovalUseRow,
    GoalRow,
    HoldRow,
    Store,
    audit,
)
from plangate.store.claims import insert_if_absent
from plangate.store.goals import goal_status, newest_plan, transition
from plangate.store.hot_statements import HotStatement
from plangate.store.outage_retry import riding_out_outages
from plangate.store.outbox import emit
from plangate.tools import ToolRegistry
from plangate.unchecked_approvals import note_unchecked
from schemas import (
    Approval,
    ExecutionFailed,
    Message,
    PlanApproved,
    PlanInvalid,
    PreviewRequested,
    StepFinished,
    plan_hash,
    utcnow,
    validate_plan,
)

ANNOUNCERS = 4  # threads that tell of finished steps, for all of an executor's runs
KEY_WAIT = 30.0  # before an approval signed by a key not trusted yet is checked again
_HOLDS = cast(Table, HoldRow.__table__)
# Asked on every run's start: a plain statement, built once (not the ORM's).
_APPROVALS_REQUIRED = HotStatement(
    select(_HOLDS.c.approvals_required).where(_HOLDS.c.plan_id == bindparam("plan_id"))
)
log = logging.getLogger(__name__)
Notify = Callable[[Envelope], None]


@dataclass(frozen=True)
class _Started:
    """A run that may go on: where its trace links to, and the steps recorded before it."""

    plan_trace: dict[str, str]
    recorded: dict[str, Claim]
    resumed: bool  # the goal was running already: an earlier run of it stopped short


class ExecutorHandler:
    """Runs approved plans exactly as approved."""

    def __init__(
        self,
        store: Store,
        registry: ToolRegistry,
        trusted: TrustedKeys,
        notify: Notify | None = None,
        max_parallel: int = 16,
        step_lease: timedelta = timedelta(minutes=5),
        link_only: bool | None = None,
        tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
        stopping: threading.Event | None = None,
    ) -> None:
        """Run plans with these tools; once `stopping` is set, hand runs back between steps."""
        self._store = store
        self._registry = registry
        self._trusted = trusted
        self._notify = notify
        # Steps of all this executor's runs share these threads (and their connections).
        self._steps = ThreadPoolExecutor(max_parallel, "plangate-step")
        # `step.finished` is told from these while the run's next step goes on (each thread
        # publishes on a broker connection of its own; a few serve every run).
        self._announcers = ThreadPoolExecutor(ANNOUNCERS, "plangate-announce")
        self._step_lease = step_lease
        self._link_only = telemetry.link_only() if link_only is None else link_only
        self._tool_timeout = tool_timeout
        self._previewer = Previewer(store, registry, self._steps, tool_timeout)
        # Plans this executor is running now: a copy of one delivered meanwhile (a resend, or
        # dead letters of the same approval replayed at once) is left to the live run.
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._draining = Draining(stopping)

    def waits_for(self) -> str:
        """Say what stopping this executor waits for now (its worker logs it at SIGTERM)."""
        return self._draining.waits_for()

    def __call__(self, message: Message, delivery: Delivery) -> Sequence[Envelope]:
        """Handle one plan.approved message (or a held plan's preview request)."""
        if isinstance(message, PreviewRequested):
            return self._previewer(message, delivery.attempt)
        if not isinstance(message, PlanApproved):
            raise Reject(f"the executor does not handle {type(message).__name__}")
        if message.plan.goal_id != message.goal_id:
            raise Reject(f"plan.approved for goal {message.goal_id!r} carries another goal's plan")
        try:
            validate_plan(message.plan, self._registry.catalog())
            # Expiry bounds when a run may start, so it is checked on the approval's first use.
            approval = self._trusted.verify_for_plan(
                message.approval, message.plan, allow_expired=True
            )
        except (ApprovalInvalid, PlanInvalid) as refusal:
            if isinstance(refusal, PlanInvalid):
                lacking = hand_back_if_lacking(
                    message.plan,
                    self._registry,
                    self._store,
                    delivery.attempt,
                    message.occurred_at,
                    problems=refusal.problems,
                )
                refusal = lacking or refusal
            return self._refuse(message, refusal)
        plan_id = message.plan.plan_id
        with self._running_lock:
            if plan_id in self._running:
                # It publishes the outcome; were it to die, the reconciler resends.
                log.info("plan %s is running here already; this copy is left to that run", plan_id)
                return []
            self._running.add(plan_id)
        try:
            return self._run_once(message, approval)
        finally:
            self._no_longer_running(plan_id)

    def _run_once(self, message: PlanApproved, approval: Approval) -> Sequence[Envelope]:
        try:
            started = self._start(message, approval)
        except (ApprovalInvalid, PlanInvalid) as refusal:
            return self._refuse(message, refusal)
        if started is None:
            return []
        if isinstance(started, Envelope):  # a redelivery of a run that already ended
            return [started]
        # Linked to the incoming message always; parented by it unless configured otherwise.
        with telemetry.run_span(
            "run plan", linked_only=self._link_only, link_to=started.plan_trace
        ) as span:
            span.set_attribute("plangate.plan_id", message.plan.plan_id)
            span.set_attribute("plangate.approval_id", approval.approval_id)
            # Said as the run first acts: a copy that finds the run live defers to it.
            acting = Resumption(span, message.plan, started.recorded) if started.resumed else unsaid
            # The approval's hash: verification checked that it is this plan's.
            outcome = self._run(message, approval.plan_hash, started.recorded, acting)
            mark_outcome(span, outcome)
            return outcome

    def _start(self, message: PlanApproved, approval: Approval) -> _Started | Envelope | None:
        """In one transaction: use the approval (once), and move the goal to `running`.

        Returns what the run needs; when the run already ended, its outcome to publish again;
        None for a revision the goal has moved past, or a run waiting for a person.
        """
        plan = message.plan
        with self._store.session() as session:
            # Locked: the move to `running` below is checked against it (PostgreSQL).
            goal = goal_status(session, message.goal_id, lock=True)
            if goal is None:
                raise Reject(f"plan.approved for unknown goal {message.goal_id!r}")
            first_use = insert_if_absent(
                session,
                ApprovalUseRow,
                {"approval_id": approval.approval_id, "plan_id": plan.plan_id},
            )
            if first_use:
                ensure_unexpired(approval)  # raising rolls the use back
                _check_approvers(session, plan.plan_id, approval)
            else:
                used = session.get_one(ApprovalUseRow, approval.approval_id)
                if used.plan_id != plan.plan_id:
                    raise ApprovalInvalid(f"approval {approval.approval_id} was already used")
            newest = newest_plan(session, plan.goal_id)
            if newest is not None and newest.plan_id != plan.plan_id:
                # A late copy for a revision since replaced: running it would trample the new one.
                data = {"plan_id": plan.plan_id, "newest_plan_id": newest.plan_id}
                audit.append(
                    session, "approval.stale", actor=ACTOR, goal_id=plan.goal_id, data=data
                )
                return None
            if goal.status in TERMINAL_STATUSES:
                outcome = outcome_of(
                    session, plan.goal_id, goal.status, goal.status_reason, plan.plan_id
                )
                return emit(session, outcome)
            if goal.status == "needs_attention":
                return None  # a redelivery while a person settles a step: nothing to do yet
            if goal.status != "running":
                transition(
                    session,
                    plan.goal_id,
                    "running",
                    by="executor",
                    actor=ACTOR,
                    data={"plan_id": plan.plan_id, "approval_id": approval.approval_id},
                    current=goal.status,
                )
            # The planner's `plan` span, stored with the plan: the run links to it (the span
            # the planner's goal came in with, if the planner recorded none).
            trace = {str(k): str(v) for k, v in (newest.trace_headers if newest else {}).items()}
            # Running already: a run of it stopped short (its executor died, or handed it back).
            resumed = goal.status == "running"
            return _Started(trace, recorded_steps(session, plan.plan_id), resumed)

    def _refuse(
        self, message: PlanApproved, refusal: ApprovalInvalid | PlanInvalid
    ) -> Sequence[Envelope]:
        """Refuse an approval: fail the goal only if it is the gate's own, else dead-letter it.

        The gate's own approval (the one it stored for this plan) that this executor cannot
        accept, e.g. signed by a key it does not trust or expired before the run started,
        fails its goal and says why. Anything else (forged, altered, replayed onto another
        plan) changes nothing: it is audited, and dead-lettered with its reason.

        The gate's own approval signed by a key this executor lacks is not the plan's fault
        but its trusted keys folder's: it is tried again, then dead-lettered, to be replayed
        (or resent by the reconciler) once the gate's public key is there.
        """
        reason = str(refusal)
        with self._store.session() as session:
            goal = session.get(GoalRow, message.goal_id)
            if goal is None:
                raise Reject(f"plan.approved for unknown goal {message.goal_id!r}: {reason}")
            issued = _issued_by_gate(session, message) if goal.status == "approved" else None
            # Until it expires: an approval no run may start on any more ends its goal.
            waits = issued is not None and issued.expires_at > utcnow()
            unchecked = waits and isinstance(refusal, UnknownSigner)
            if issued is not None and not unchecked:
                # The plan itself (tools no executor offers) is no fault of the approval's.
                what = "its plan" if isinstance(refusal, PlanInvalid) else "the gate's approval"
                log.error("goal %s: %s was refused: %s", goal.id, what, reason)
                transition(
                    session, message.goal_id, "failed", by="executor", actor=ACTOR, reason=reason
                )
                failed = ExecutionFailed(
                    goal_id=message.goal_id, plan_id=message.plan.plan_id, reason=reason
                )
                return [emit(session, failed)]
            status = goal.status
            if not unchecked:
                data = {"plan_id": message.plan.plan_id, "reason": reason, "goal_status": status}
                audit.append(session, "approval.refused", actor=ACTOR, goal_id=goal.id, data=data)
        if unchecked:  # noted for `status`, which said the gate was still releasing it
            log.error("goal %s: cannot check the gate's approval: %s", message.goal_id, reason)
            note_unchecked(self._store, message.goal_id, message.plan.plan_id, ACTOR, reason)
            raise Retry(f"{reason}; the goal waits in approved meanwhile", delay=KEY_WAIT)
        # Raised once the audit entry is committed: the message goes to the dead letters.
        raise Reject(f"approval refused, goal {message.goal_id} left {status}: {reason}")

    def _run(
        self,
        message: PlanApproved,
        digest: str,
        recorded: Mapping[str, Claim],
        acting: Callable[[], None],
    ) -> Sequence[Envelope]:
        """Run the plan; `acting` is told as the run first acts (a tool call, or its end)."""
        plan = message.plan
        run = PlanRun(
            plan,
            digest,
            self._registry,
            StepLedger(self._store, plan, self._step_lease, recorded),
            lambda outcome: self._step_finished(plan.goal_id, plan.plan_id, outcome),
            self._steps,
            self._tool_timeout,
            self._announcers,
            self._draining,
            acting,
        )
        run.run()  # the last step's records are left to the run's end, below
        if run.not_started:  # the executor is stopping: another one goes on with the run
            hand_back(run, plan, self._store)
        acting()  # a run that called no tool acts as it ends the run

        def end() -> Sequence[Envelope]:
            kept = run.kept()
            try:
                with self._store.session() as session:
                    # The goal first, as every move of it locks it: then the records (and
                    # their audit).
                    goal = goal_status(session, plan.goal_id, lock=True)
                    assert goal is not None  # the run started on it
                    outcomes = run.record_last(session)
                    return end_run(session, plan.goal_id, plan.plan_id, goal, outcomes)
            except Exception:
                run.restore(kept)  # what it took as recorded was not: tried again whole
                raise

        # A last write's result in hand is kept through a database restart (`riding_out_outages`).
        held = ", ".join(repr(o.step_id) for o in run.outcomes.values() if o.attempt is not None)
        what = f"the end of plan {plan.plan_id}" + (f" (the result of step {held})" if held else "")
        envelopes = riding_out_outages(self._store, end, within=run.result_lease_left(), what=what)
        # Ended (or waiting for a person): a copy from now on, e.g. the resume a settle sends
        # while the last step is still being announced, is the stored run's to answer.
        self._no_longer_running(plan.plan_id)
        run.announce_last()
        return envelopes

    def _no_longer_running(self, plan_id: str) -> None:
        with self._running_lock:
            self._running.discard(plan_id)

    def _step_finished(self, goal_id: str, plan_id: str, outcome: StepOutcome) -> None:
        """Tell observers at once (progress, not a hand-off: the ledger has the record)."""
        if self._notify is not None:
            headers: dict[str, str] = {}
            telemetry.inject(headers)
            event = StepFinished(
                goal_id=goal_id,
                plan_id=plan_id,
                step_id=outcome.step_id,
                tool=outcome.tool,
                status=outcome.status,
                output=outcome.output,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
                occurred_at=outcome.finished_at,
            )
            try:
                self._notify(Envelope.of(event, headers))
            except BrokerUnavailable as exc:  # said in a line: a 15 KB traceback each step
                log.warning(
                    "could not announce step %s to observers (%s); its run goes on, and the "
                    "store has its record: nothing to do",
                    outcome.step_id,
                    exc,
                )
            except Exception:  # progress for observers only; the store has the record
                log.warning("could not announce step %s", outcome.step_id, exc_info=True)


def _issued_by_gate(session: Session, message: PlanApproved) -> ApprovalRow | None:
    """Return the gate's record of the approval the message carries, with its own plan."""
    issued = session.execute(
        select(ApprovalRow).where(ApprovalRow.plan_id == message.plan.plan_id)
    ).scalar_one_or_none()
    if (
        issued is not None
        and issued.goal_id == message.goal_id
        and issued.plan_hash == plan_hash(message.plan)
        and issued.envelope == message.approval.model_dump(mode="json")
    ):
        return issued
    return None


def _check_approvers(session: Session, plan_id: str, approval: Approval) -> None:
    """Refuse an approval naming fewer distinct approvers than the plan's hold requires.

    The gate counted them before it signed; this is the executor's own check against the
    record the gate made when it held the plan (four eyes, not one key, stand behind a run).
    """
    found = _APPROVALS_REQUIRED.first(session, {"plan_id": plan_id})
    required = found[0] if found is not None else None
    if required is None or required <= 1:
        return
    named = set(approval.approvers)
    if len(named) < required:
        raise ApprovalInvalid(
            f"the approval names {len(named)} approvers; the hold of plan {plan_id} "
            f"requires {required}"
        )
