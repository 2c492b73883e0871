"""Dry runs of held plans, for reviewers: read steps run for real, write steps only say.

The gate asks for one when the rule that held a plan says `preview: true`. What counts as a
write is this executor's own declaration of the tool, never the message's: a write tool is
never called here, only its `preview` (what it would do with these arguments). A step that
needs a write's output stays `pending`, since a preview never has that output.

Nothing of a preview is approval: it is stored beside the plan for people to read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from executor_worker.engine import (
    DEFAULT_TOOL_TIMEOUT,
    DagWalk,
    StepOutcome,
)
from executor_worker.lacking_tools import hand_back_if_lacking
from executor_worker.output_bounds import PREVIEW_BUDGET_BYTES, PREVIEW_CHARS, json_size, kept_error
from executor_worker.run_end import ACTOR
from executor_worker.tool_call import invoke, tool_span
from plangate import telemetry
from plangate.bus import Envelope
from plangate.errors import Reject
from plangate.step_calls import idempotency_key
from plangate.store import DecisionRow, GoalRow, PlanPreviewRow, PlanRow, Store, audit
from plangate.store.outbox import emit
from plangate.tools import Tool, ToolContext, ToolRegistry
from schemas import (
    Plan,
    PlanInvalid,
    PlanPreviewed,
    PreviewRequested,
    Step,
    StepPreview,
    plan_hash,
    validate_plan,
)

log = logging.getLogger(__name__)
NO_PREVIEW = "this tool declares no preview; it would be called with the arguments shown"


class PreviewRun(DagWalk):
    """One dry run of a plan: reads are called, writes are asked what they would do."""

    waits_on = frozenset({"previewed"})
    wait_note = "needs the output of write step {step!r}, which a preview does not run"

    def __init__(
        self,
        plan: Plan,
        registry: ToolRegistry,
        pool: Executor,
        tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
    ) -> None:
        super().__init__(plan, pool, tool_timeout=tool_timeout)
        self._registry = registry
        self._args: dict[str, dict[str, Any]] = {}
        self._previews: dict[str, str | None] = {}

    def _context(self, step: Step, tool: Tool[..., Any], key: str, attempt: int = 1) -> ToolContext:
        return replace(super()._context(step, tool, key, attempt), preview=True)

    def steps(self) -> list[StepPreview]:
        """Run the walk; return each step's preview, in plan order."""
        outcomes = self.run()
        return within_budget(
            [self._preview_of(step, outcomes[step.id]) for step in self._plan.steps]
        )

    def _call(self, step: Step, args: dict[str, Any]) -> StepOutcome:
        tool = self._registry.get(step.tool)
        self._args[step.id] = args
        if tool.spec.effect == "write":
            try:
                said = tool.preview(args)
                self._previews[step.id] = None if said is None else kept_error(said, PREVIEW_CHARS)
            except Exception as exc:  # a reviewer aid: its failure is shown, never fatal
                self._previews[step.id] = None
                note = kept_error(f"the tool's preview failed: {type(exc).__name__}: {exc}")
                return StepOutcome(step.id, step.tool, "previewed", error=note)
            return StepOutcome(step.id, step.tool, "previewed")
        # Distinct from the execution's key: a read has no effect to deduplicate, and a
        # preview must never be mistaken downstream for the approved run.
        key = "preview-" + idempotency_key(self._plan.goal_id, step, args)
        with tool_span(step) as span:
            span.set_attribute("plangate.preview", True)
            return invoke(tool, step, args, self._context(step, tool, key), span)

    def _preview_of(self, step: Step, outcome: StepOutcome) -> StepPreview:
        spec = self._registry.get(step.tool).spec
        status = {"succeeded": "ran"}.get(outcome.status, outcome.status)
        preview = self._previews.get(step.id)
        note = outcome.error
        if status == "previewed" and preview is None and note is None:
            note = NO_PREVIEW
        return StepPreview(
            step_id=step.id,
            tool=step.tool,
            effect=spec.effect,
            status=status,
            args=self._args.get(step.id, dict(step.args)),
            output=outcome.output,
            preview=preview,
            note=note,
        )


class Previewer:
    """Handles plan.preview_requested: dry-runs a held plan and stores what it found."""

    def __init__(
        self,
        store: Store,
        registry: ToolRegistry,
        pool: Executor,
        tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
    ) -> None:
        self._store = store
        self._registry = registry
        self._pool = pool
        self._tool_timeout = tool_timeout

    def __call__(self, message: PreviewRequested, attempt: int = 1) -> Sequence[Envelope]:
        """Dry-run the plan if it is still held; on a redelivery, say the stored result again."""
        plan = message.plan
        digest = plan_hash(plan)
        if digest != message.plan_hash or plan.goal_id != message.goal_id:
            raise Reject(f"plan {plan.plan_id}: the preview request does not match its plan")
        with self._store.session() as session:
            row = session.get(PlanRow, plan.plan_id)
            if row is None or row.plan_hash != digest:
                raise Reject(f"plan {plan.plan_id}: a preview was asked of a plan not in the store")
            stored = session.get(PlanPreviewRow, plan.plan_id)
            if stored is None or stored.plan_hash != digest:
                raise Reject(f"plan {plan.plan_id}: no rule asked for a preview of it")
            if stored.steps is not None:  # a redelivery: say the stored result again
                return [emit(session, _previewed(stored))]
            if not _held_for_preview(session, plan):
                log.info("plan %s is no longer held; no preview", plan.plan_id)
                return []
        try:
            validate_plan(plan, self._registry.catalog())
        except PlanInvalid as invalid:
            # Tools another executor offers: handed on, as a run is (it was dead-lettered, and
            # the reviewer's page said "not ready yet" for good).
            asked_at = message.occurred_at
            lacking = hand_back_if_lacking(
                plan,
                self._registry,
                self._store,
                attempt,
                asked_at,
                gives_up=False,
                problems=invalid.problems,
            )
            said = lacking or invalid
            raise Reject(f"plan {plan.plan_id} cannot be previewed here: {said}") from invalid
        with telemetry.tracer().start_as_current_span("preview plan") as span:
            span.set_attribute("plangate.plan_id", plan.plan_id)
            run = PreviewRun(plan, self._registry, self._pool, self._tool_timeout)
            steps = run.steps()
        with self._store.session() as session:
            if not _held_for_preview(session, plan):
                # Decided while the reads ran: a preview now would only muddle the record.
                log.info(
                    "plan %s was decided during its preview; the preview is dropped", plan.plan_id
                )
                return []
            made = session.execute(
                update(PlanPreviewRow)
                .where(PlanPreviewRow.plan_id == plan.plan_id, PlanPreviewRow.steps.is_(None))
                .values(steps=[step.model_dump(mode="json") for step in steps])
            )
            if getattr(made, "rowcount", 0) == 1:  # not another executor's, made meanwhile
                audit.append(
                    session,
                    "plan.previewed",
                    actor=ACTOR,
                    goal_id=plan.goal_id,
                    data={
                        "plan_id": plan.plan_id,
                        "plan_hash": digest,
                        "steps": {step.step_id: step.status for step in steps},
                    },
                )
            stored = session.get_one(PlanPreviewRow, plan.plan_id)
            return [emit(session, _previewed(stored))]


def within_budget(steps: list[StepPreview]) -> list[StepPreview]:
    """Return `steps` with their largest parts left out, one by one, until they fit.

    Each output is bounded, but fifty of them are not; a `plan.previewed` that no observer
    could decode would help no reviewer. Outputs, arguments and a write's preview text are
    weighed together, largest first; what is left out is said in its step's note.
    """
    total = sum(json_size(step.model_dump(mode="json")) for step in steps)
    if total <= PREVIEW_BUDGET_BYTES:
        return steps
    kept = {step.step_id: step for step in steps}
    parts = sorted(
        (
            (json_size(getattr(step, part)), step.step_id, part)
            for step in steps
            for part in _LEAVABLE
            if getattr(step, part)  # nothing to gain from an empty part
        ),
        reverse=True,
    )
    for size, step_id, part in parts:
        if total <= PREVIEW_BUDGET_BYTES:
            break
        current = kept[step_id]
        note = f"{part} not shown ({size} bytes): the preview is over its size limit"
        kept[step_id] = current.model_copy(
            update={part: _LEAVABLE[part], "note": _joined(current.note, note)}
        )
        total -= size - json_size(_LEAVABLE[part]) - len(note)
    return list(kept.values())


# What a part is replaced with when it is left out.
_LEAVABLE: dict[str, Any] = {"output": None, "args": {}, "preview": None}


def _joined(note: str | None, more: str) -> str:
    return more if note is None else f"{note}; {more}"


def _held_for_preview(session: Session, plan: Plan) -> bool:
    """Return True if the policy held this revision and nobody has decided it since."""
    goal = session.get(GoalRow, plan.goal_id)
    decisions = session.execute(
        select(DecisionRow.stage, DecisionRow.action).where(DecisionRow.plan_id == plan.plan_id)
    ).all()
    actions = dict(decisions)
    return goal is not None and goal.status == "held" and actions == {"policy": "hold"}


def _previewed(row: PlanPreviewRow) -> PlanPreviewed:
    return PlanPreviewed(
        goal_id=row.goal_id,
        plan_id=row.plan_id,
        plan_hash=row.plan_hash,
        steps=[StepPreview.model_validate(step) for step in row.steps or []],
    )
