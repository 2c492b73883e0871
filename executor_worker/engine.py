"""The DAG engine: runs a validated plan's steps as their dependencies allow, in parallel.

References (`${id}`, `${id.field}`) are resolved from earlier outputs; `when` is CEL over
`steps.<id>.output`. A step whose dependency failed or was skipped does not run. How one tool
is called, within its deadline, is `tool_call`'s.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from plangate.tools import Tool, ToolContext
from schemas import Plan, Step, utcnow
from schemas.cel_check import compiled
from schemas.cel_cost import condition_too_costly
from schemas.references import UnresolvedReference, data_sources, dependencies, resolve


@dataclass(frozen=True)
class StepOutcome:
    """How one step ended."""

    step_id: str
    tool: str
    status: str  # succeeded, failed, skipped, unknown
    output: Any = None
    error: str | None = None
    duration_ms: float = 0.0
    # A read's own answer, not yet recorded: what stands is known once it is (`PlanRun`).
    # Also the last step's write, recorded with the run's end; `attempt` is its claim's.
    provisional: bool = False
    attempt: int | None = None
    # When it ended (made then): its `step.finished` says so, however late it is announced
    # (the last steps are announced after the run's end, which was earlier than they).
    finished_at: datetime = field(default_factory=utcnow, compare=False)


DEFAULT_TOOL_TIMEOUT = 60.0
OUTPUT_NOT_KEPT = "its output was not kept"  # in a succeeded step's note: it was over the limit
CANCELLED = "not run: goal cancelled"  # why a step was skipped: its goal was cancelled first
# A finished read is recorded (and told) with the next wave's start. While steps beside it run
# on and no wave starts, it is recorded this long after instead: a 1 s read beside an 8 s write
# was told, and recorded, only at the run's end (and lost if the process ended first).
RECORD_WHILE_WAITING_SECONDS = 0.2


class DagWalk:
    """Walks a validated plan's steps in dependency order, independent ones in parallel.

    What calling a step means is the subclass's: an execution claims and runs it, a preview runs
    only reads. A step whose dependency did not succeed, or whose `when` is false, is settled
    without a call.
    """

    # A dependency in one of these states leaves a step `pending` (it may run later), not skipped.
    waits_on: frozenset[str] = frozenset()
    wait_note = "waits on step {step!r}"

    def __init__(
        self,
        plan: Plan,
        pool: Executor,
        on_finished: Callable[[StepOutcome], None] | None = None,
        tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
        announcer: Executor | None = None,
    ) -> None:
        """Walk `plan`, calling steps side by side in `pool`; `on_finished` hears of each.

        `announcer` tells of what finished while a step alone runs in the walking thread
        (default: `pool`); threads of its own keep a slow broker from holding step slots.
        """
        self._plan = plan
        self._tool_timeout = tool_timeout  # for tools that declare no timeout of their own
        # Shared by the runs of one executor: long-lived threads keep their broker and store
        # connections, where a pool per run would open (and strand) new ones every time.
        self._pool = pool
        self._on_finished = on_finished
        self._announcer = announcer or pool
        self.outcomes: dict[str, StepOutcome] = {}
        # The step started when nothing else was left to start or still running, if one was.
        self._last: str | None = None
        self._telling: Future[None] | None = None  # an announcement made beside a step
        # The steps left unstarted because the executor is stopping (`_stopping`), in order.
        self.not_started: list[str] = []

    def run(self) -> dict[str, StepOutcome]:
        """Bring every step to an outcome; return the outcomes by step id.

        Once the executor is stopping, only the steps already started are: `not_started`
        lists the others.
        """
        running: dict[Future[StepOutcome], str] = {}
        finished: list[StepOutcome] = []  # not yet announced
        try:
            self._walk(running, finished)
        except BaseException:
            # The pool outlives this run: leave none of its steps running behind.
            for future in running:
                future.cancel()
            wait(running)
            raise
        finally:
            self._announce(finished)  # what did finish is told, even when the run stops short
        return self.outcomes

    def _walk(self, running: dict[Future[StepOutcome], str], finished: list[StepOutcome]) -> None:
        waiting = {step.id: step for step in self._plan.steps}
        deps = {step.id: dependencies(step) for step in self._plan.steps}
        while waiting or running:
            if self._stopping():  # what runs ends (and is recorded); nothing more starts
                if not running:
                    self.not_started = list(waiting)
                    return
                ready = []
            else:
                ready = [waiting.pop(s) for s in list(waiting) if deps[s] <= self.outcomes.keys()]
            if ready:
                to_call = self._start_wave(ready, deps, finished)
                if len(to_call) == 1 and not running:
                    # A step alone is called in this thread: handing it to the pool and waiting
                    # for it cost a thread wake-up each way on the run's path (a fifth of a run
                    # of three instant steps). What finished before it is told meanwhile.
                    step, args = to_call[0]
                    if not waiting:
                        self._last = step.id
                    self._announce_beside(finished)
                    outcome = contextvars.copy_context().run(self._call, step, args)
                    self._finish(outcome, finished)
                    continue
                for step, args in to_call:
                    context = contextvars.copy_context()
                    running[self._pool.submit(context.run, self._call, step, args)] = step.id
            # Announced once the steps they made ready are under way, not before: an
            # announcement is a broker round trip that the next step need not wait for.
            self._announce(finished)
            if running:
                self._wait_for_a_step(running, finished)

    def _wait_for_a_step(
        self, running: dict[Future[StepOutcome], str], finished: list[StepOutcome]
    ) -> None:
        """Wait for a running step to end; meanwhile, record what ended unrecorded."""
        early = RECORD_WHILE_WAITING_SECONDS if self._unrecorded() else None
        done, _ = wait(running, timeout=early, return_when=FIRST_COMPLETED)
        if not done:  # the others run on: what ended is recorded now, and told
            self._record_while_waiting(finished)
        for future in done:
            outcome = future.result()  # a step that raised stops the run (see `run`)
            running.pop(future)
            self._finish(outcome, finished)

    def _unrecorded(self) -> bool:
        """Return whether a step ended whose outcome waits to be recorded (`PlanRun`)."""
        return False

    def _record_while_waiting(self, finished: list[StepOutcome]) -> None:
        """Record the outcomes that wait to be recorded, adding them to `finished` (`PlanRun`)."""

    def _start_wave(
        self, ready: list[Step], deps: Mapping[str, set[str]], finished: list[StepOutcome]
    ) -> list[tuple[Step, dict[str, Any]]]:
        """Return the ready steps to call, with their arguments (a subclass records first)."""
        return self._to_call(ready, deps, finished, None)

    def _to_call(
        self,
        ready: list[Step],
        deps: Mapping[str, set[str]],
        finished: list[StepOutcome],
        cancelled: bool | None,
    ) -> list[tuple[Step, dict[str, Any]]]:
        """Settle the ready steps that must not run; return the others, with their arguments.

        `cancelled` is whether the goal was cancelled, when the caller knows: asked once for
        the steps that start together, not by each (a store read each).
        """
        to_call = []
        for step in ready:
            settled = self._reading_what_was_not_kept(step) or self._settle_without_running(
                step, deps[step.id]
            )
            if settled is None:
                try:
                    args = resolve(dict(step.args), self._outputs())
                except UnresolvedReference as exc:
                    settled = StepOutcome(step.id, step.tool, "failed", error=str(exc))
            if settled is not None:
                self._settled(step, settled)
                self._finish(settled, finished)
                continue
            if cancelled is None:
                cancelled = self._goal_cancelled()
            if cancelled:  # an operator cancelled the goal: no step starts
                skipped = StepOutcome(step.id, step.tool, "skipped", error=CANCELLED)
                # Recorded: `status` tells a step left unstarted from one still running.
                self._settled(step, skipped)
                self._finish(skipped, finished)
                continue
            to_call.append((step, args))
        return to_call

    def _reading_what_was_not_kept(self, step: Step) -> StepOutcome | None:
        """Fail a step whose argument or `when` reads an output too large to be kept.

        Read as null, it would have made up an argument or decided a condition on nothing.
        """
        for source in sorted(data_sources(step)):
            earlier = self.outcomes.get(source)
            if earlier is not None and OUTPUT_NOT_KEPT in (earlier.error or ""):
                reason = f"it reads the output of step {source!r}, which was too large to keep"
                return StepOutcome(step.id, step.tool, "failed", error=reason)
        return None

    def _call(self, step: Step, args: dict[str, Any]) -> StepOutcome:
        """Call one step whose dependencies succeeded, with its references resolved."""
        raise NotImplementedError

    def _settled(self, step: Step, outcome: StepOutcome) -> None:
        """Take note of a step settled without a call (skipped, or failed before it)."""

    def _context(self, step: Step, tool: Tool[..., Any], key: str, attempt: int = 1) -> ToolContext:
        return ToolContext(
            goal_id=self._plan.goal_id,
            plan_id=self._plan.plan_id,
            step_id=step.id,
            idempotency_key=key,
            attempt=attempt,
            timeout=tool.timeout if tool.timeout is not None else self._tool_timeout,
        )

    def _outputs(self) -> dict[str, Any]:
        return {step_id: outcome.output for step_id, outcome in self.outcomes.items()}

    def _finish(self, outcome: StepOutcome, finished: list[StepOutcome]) -> None:
        self.outcomes[outcome.step_id] = outcome
        if not outcome.provisional:  # told once it stands
            finished.append(outcome)

    def _goal_cancelled(self) -> bool:
        """Return whether the goal was cancelled: then no further step starts."""
        return False

    def _stopping(self) -> bool:
        """Return whether the executor is stopping: then no further step starts either."""
        return False

    def _announce(self, finished: list[StepOutcome]) -> None:
        """Tell observers of what finished, in this thread, after anything still being told."""
        self._told()
        self._tell(finished)
        finished.clear()

    def _announce_beside(self, finished: list[StepOutcome]) -> None:
        """Tell observers of what finished from an announcer thread, while this one calls a step.

        An announcement is a broker round trip the step need not wait for. Each waits for the
        one before it (`_told`), so observers hear of the steps in the order they finished.
        """
        self._told()
        if finished and self._on_finished is not None:
            told = list(finished)
            context = contextvars.copy_context()  # the run's trace, for the message's headers
            self._telling = self._announcer.submit(context.run, self._tell, told)
        finished.clear()

    def _tell(self, outcomes: list[StepOutcome]) -> None:
        if self._on_finished is not None:
            for outcome in outcomes:
                self._on_finished(outcome)

    def _told(self) -> None:
        """Wait until the announcement under way in an announcer thread, if one is, is made."""
        if self._telling is not None:
            telling, self._telling = self._telling, None
            telling.result()

    def _settle_without_running(self, step: Step, deps: set[str]) -> StepOutcome | None:
        """Return the outcome of a step that must not run (dependency or condition), else None."""
        blocked = sorted(d for d in deps if self.outcomes[d].status != "succeeded")
        waiting = [d for d in blocked if self.outcomes[d].status in {*self.waits_on, "pending"}]
        if waiting:
            note = self.wait_note.format(step=waiting[0])
            return StepOutcome(step.id, step.tool, "pending", error=note)
        if blocked:
            first = self.outcomes[blocked[0]]
            reason = f"not run: step {first.step_id!r} {first.status}"
            return StepOutcome(step.id, step.tool, "skipped", error=reason)
        if step.when is None:
            return None
        view = {
            "steps": {k: {"output": v.output, "status": v.status} for k, v in self.outcomes.items()}
        }
        if (too_costly := condition_too_costly(step.when, view)) is not None:
            return StepOutcome(step.id, step.tool, "failed", error=too_costly)
        try:
            verdict = compiled(step.when).execute(view)
        except Exception as exc:  # e.g. KeyError for a field the output lacks: the step fails
            error = f"`when` failed ({type(exc).__name__}): {exc}"
            return StepOutcome(step.id, step.tool, "failed", error=error)
        if not isinstance(verdict, bool):
            return StepOutcome(step.id, step.tool, "failed", error="`when` is not a boolean")
        if not verdict:
            return StepOutcome(step.id, step.tool, "skipped", error=f"`when` is false: {step.when}")
        return None
