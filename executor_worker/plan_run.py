"""One execution of one approved plan: the DAG walk, with every step claimed and recorded.

The walk itself (`engine.DagWalk`) knows no store; this is where a run meets the step ledger:
a wave's reads are recorded together with the claims of the writes that follow them, and the
plan's last results with the run's end (`ExecutorHandler._run`). A read that ends while steps
beside it run on, with no wave to start, is recorded by itself shortly after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

from opentelemetry.trace import Span
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from executor_worker.draining import Draining
from executor_worker.engine import (
    DEFAULT_TOOL_TIMEOUT,
    DagWalk,
    StepOutcome,
)
from executor_worker.ledger import Claim, ReadAnswer, StepLedger
from executor_worker.tool_call import invoke, recorded_earlier, tool_span
from plangate import faults
from plangate.errors import StoreUnavailable
from plangate.step_calls import idempotency_key
from plangate.tools import Tool, ToolContext, ToolRegistry
from schemas import Plan, Step

log = logging.getLogger(__name__)


class PlanRun(DagWalk):
    """One execution of one approved plan: each write claimed and run once; every step recorded."""

    waits_on = frozenset({"unknown"})
    wait_note = "waits until a person settles step {step!r}"

    def __init__(
        self,
        plan: Plan,
        plan_hash: str,
        registry: ToolRegistry,
        ledger: StepLedger,
        on_finished: Callable[[StepOutcome], None],
        pool: Executor,
        tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
        announcer: Executor | None = None,
        draining: Draining | None = None,
        acting: Callable[[], None] = lambda: None,
    ) -> None:
        """Run `plan`; `acting` is told before each tool call (`run_span.Resumption`)."""
        super().__init__(plan, pool, on_finished, tool_timeout, announcer)
        self._draining = draining or Draining()  # the executor's stop: no step starts after
        self._acting = acting
        self._plan_hash = plan_hash
        self._registry = registry
        self._ledger = ledger
        self._last_finished: list[StepOutcome] = []  # recorded with the run's end
        self._claims: dict[str, Claim] = {}  # made when their wave started, taken by `_call`
        self._wave: Session | None = None  # the transaction that starts a wave, while open
        self._record_early = True  # reads that ended while others run on (until the store fails)

    def _settled(self, step: Step, outcome: StepOutcome) -> None:
        if outcome.status != "pending":  # pending is not an outcome: it runs once settled
            self._ledger.record(step, outcome.status, None, outcome.error, session=self._wave)

    def _start_wave(
        self, ready: list[Step], deps: Mapping[str, set[str]], finished: list[StepOutcome]
    ) -> list[tuple[Step, dict[str, Any]]]:
        """Record the reads that ready steps follow and claim their writes, in one transaction.

        Only when there is either to do. What the steps read of earlier ones (a `when`, an
        argument) is what stands: for a read, the first answer any run of the plan recorded,
        this run's or another's that came first (then this run goes on with that one). The
        transaction also says whether the goal was cancelled. A write is claimed before it is
        called, as ever; one that another run recorded is not called again.
        """
        reads = [o for o in self.outcomes.values() if o.provisional and o.attempt is None]
        if not reads:
            to_call = self._to_call(ready, deps, finished, None)
            if any(self._writes(step) for step, _ in to_call):
                with self._ledger.transaction() as session:
                    self._claim_writes(to_call, session)
            return self._claimed(to_call, finished)
        answers = [_answer(self._plan.step(o.step_id), o) for o in reads]
        settled: list[StepOutcome] = []  # told once the transaction that records them commits
        with self._ledger.transaction() as session:
            self._wave = session
            try:
                stands = self._ledger.record_reads(answers, session=session)
                self._take_what_stands(reads, stands, settled)
                cancelled = self._ledger.goal_cancelled(session=session)
                to_call = self._to_call(ready, deps, settled, cancelled)
                self._claim_writes(to_call, session)
            finally:
                self._wave = None
        finished.extend(settled)
        return self._claimed(to_call, finished)

    def _writes(self, step: Step) -> bool:
        return self._registry.get(step.tool).spec.effect == "write"

    def _claim_writes(self, to_call: list[tuple[Step, dict[str, Any]]], session: Session) -> None:
        for step, args in to_call:
            if self._writes(step):
                spec = self._registry.get(step.tool).spec
                key = idempotency_key(self._plan.goal_id, step, args)
                self._claims[step.id] = self._ledger.claim(step, spec, key, session=session)

    def _claimed(
        self, to_call: list[tuple[Step, dict[str, Any]]], finished: list[StepOutcome]
    ) -> list[tuple[Step, dict[str, Any]]]:
        """Settle the writes whose claim found them recorded; return the steps left to call."""
        calls = []
        for step, args in to_call:
            claim = self._claims.get(step.id)
            if claim is None or claim.kind == "run":
                calls.append((step, args))
            else:
                self._finish(_recorded(step, self._claims.pop(step.id)), finished)
        return calls

    def _take_what_stands(
        self, called: list[StepOutcome], stands: Mapping[str, Claim], finished: list[StepOutcome]
    ) -> None:
        for outcome in called:
            step = self._plan.step(outcome.step_id)
            stood = _recorded(step, stands[outcome.step_id], outcome.duration_ms)
            final = replace(stood, finished_at=outcome.finished_at)  # ended then, not now
            self.outcomes[outcome.step_id] = final
            finished.append(final)

    def _unrecorded(self) -> bool:
        return self._record_early and any(
            o.provisional and o.attempt is None for o in self.outcomes.values()
        )

    def _record_while_waiting(self, finished: list[StepOutcome]) -> None:
        """Record the reads that answered while steps beside them run on, in a transaction.

        Should the store fail, they are left to the next wave or the run's end (which ride
        an outage out), as before: this run tries no more.
        """
        reads = [o for o in self.outcomes.values() if o.provisional and o.attempt is None]
        answers = [_answer(self._plan.step(o.step_id), o) for o in reads]
        kept, settled = dict(self.outcomes), list[StepOutcome]()
        try:
            with self._ledger.transaction() as session:
                stands = self._ledger.record_reads(answers, session=session)
                self._take_what_stands(reads, stands, settled)
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self.outcomes, self._record_early = kept, False
            log.debug("reads of plan %s left to its end: %s", self._plan.plan_id, exc)
            return
        finished.extend(settled)  # told once committed

    def record_last(self, session: Session) -> dict[str, StepOutcome]:
        """Record, in the caller's transaction (the run's end), what is still provisional.

        That is the reads that answered last, and the last step's write when the plan ends
        with one. Returns every step's outcome; `announce_last` tells observers of these once
        the transaction is committed.
        """
        reads = [o for o in self.outcomes.values() if o.provisional and o.attempt is None]
        if reads:
            answers = [_answer(self._plan.step(o.step_id), o) for o in reads]
            stands = self._ledger.record_reads(answers, session=session)
            self._take_what_stands(reads, stands, self._last_finished)
        for write in [o for o in self.outcomes.values() if o.attempt is not None]:
            step = self._plan.step(write.step_id)
            attempt = write.attempt
            self._ledger.record(
                step, write.status, write.output, write.error, attempt=attempt, session=session
            )
            final = replace(write, provisional=False, attempt=None)
            self.outcomes[write.step_id] = final
            self._last_finished.append(final)
        return self.outcomes

    def result_lease_left(self) -> float | None:
        """Return the seconds left of the claim of a write whose result waits for the run's end.

        None when no result waits.
        """
        held = [self._plan.step(o.step_id) for o in self.outcomes.values() if o.attempt is not None]
        return min((self._ledger.lease_left(step) for step in held), default=None)

    def kept(self) -> tuple[dict[str, StepOutcome], list[StepOutcome]]:
        """Return what `record_last` changes, for `restore` if its transaction fails."""
        return dict(self.outcomes), list(self._last_finished)

    def restore(self, kept: tuple[dict[str, StepOutcome], list[StepOutcome]]) -> None:
        """Undo `record_last`'s changes: its transaction did not commit."""
        self.outcomes, self._last_finished = dict(kept[0]), list(kept[1])

    def announce_last(self) -> None:
        """Tell observers of the outcomes `record_last` recorded (once they are committed)."""
        self._announce(self._last_finished)

    def _goal_cancelled(self) -> bool:
        if not self.outcomes:
            # Before any step has ended, the run's start has just found the goal not cancelled
            # (the transaction that moved it to `running`): the first steps need not ask again.
            return False
        return self._ledger.goal_cancelled()

    def _stopping(self) -> bool:
        return self._draining.stopping

    def _call(self, step: Step, args: dict[str, Any]) -> StepOutcome:
        tool = self._registry.get(step.tool)
        with tool_span(step) as span:
            key = idempotency_key(self._plan.goal_id, step, args)
            if tool.spec.effect == "read":
                self._ledger.calling(step, args, None)
                earlier = self._ledger.recorded(step)
                if earlier is not None:
                    return recorded_earlier(_recorded(step, earlier), span)
                called = self._invoke(tool, step, args, self._context(step, tool, key), span)
                # Recorded with the run's other finished reads, in one transaction, before any
                # step that reads them starts (`_start_wave`).
                return replace(called, provisional=True)
            claim = self._claims.pop(step.id, None) or self._ledger.claim(step, tool.spec, key)
            if claim.kind != "run":
                return recorded_earlier(_recorded(step, claim), span)
            # The key its claim recorded first: this release's formula may not have made it.
            key = claim.key or key
            self._ledger.calling(step, args, key)
            context = self._context(step, tool, key, claim.attempt)
            outcome = self._invoke(tool, step, args, context, span)
            if outcome.status == "succeeded":
                faults.trip("mid_tool")  # the effect happened; its record did not
            if step.id == self._last:
                # Nothing runs after it: recorded with the run's end, in its transaction.
                return replace(outcome, provisional=True, attempt=claim.attempt)
            self._ledger.record(
                step, outcome.status, outcome.output, outcome.error, attempt=claim.attempt
            )
            return outcome

    def _invoke(
        self,
        tool: Tool[..., Any],
        step: Step,
        args: dict[str, Any],
        context: ToolContext,
        span: Span,
    ) -> StepOutcome:
        """Call a step's tool, counted as in flight while it runs (the executor may stop)."""
        self._acting()
        with self._draining.calling(self._plan.goal_id, step.id):
            return invoke(tool, step, args, context, span)


def _answer(step: Step, outcome: StepOutcome) -> ReadAnswer:
    return (step, outcome.status, outcome.output, outcome.error, outcome.duration_ms)


def _recorded(step: Step, claim: Claim, duration_ms: float = 0.0) -> StepOutcome:
    """Return the outcome the ledger holds for a step (it may differ from this run's call)."""
    status = claim.status or "unknown"
    return StepOutcome(step.id, step.tool, status, claim.output, claim.error, duration_ms)
