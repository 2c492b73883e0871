"""Where each argument's data comes from: the plan's data flow, known before anything runs.

Plans are static DAGs with explicit references (`${step}`) and conditions (`when`), so which
steps' outputs reach each argument of each step is a fact of the plan. An output is untrusted
when its tool says so (`ToolSpec.output_trust`; unknown tools too) or when any of the step's
own inputs was: data stays untrusted however many steps it passes through. The policy sees
it (`step.untrusted_inputs`, `plan.writes_from_untrusted`) and the review shows it, so a
ticket's text cannot steer a page's message or recipient without a person seeing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from schemas.plan import Plan, Step
from schemas.references import data_sources, references_in, steps_in_condition
from schemas.tool_spec import ToolSpec

CONDITION = "when"  # the name the condition goes by among a step's inputs


@dataclass(frozen=True)
class StepFlow:
    """The steps whose outputs reach each input of one step (its arguments, and `when`)."""

    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    untrusted: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def untrusted_inputs(self) -> tuple[str, ...]:
        """Every untrusted step whose output reaches any input of this step, sorted."""
        return tuple(sorted({source for ids in self.untrusted.values() for source in ids}))


def data_flow(plan: Plan, catalog: Mapping[str, ToolSpec]) -> dict[str, StepFlow]:
    """Return, by step id, which steps' outputs reach each input, and which are untrusted."""
    steps = {step.id: step for step in plan.steps}
    directs = {step.id: _direct(step) for step in plan.steps}  # read once: the dear part
    untrusted_steps = {step.id for step in plan.steps if _untrusted(step, catalog)}
    reaches: dict[str, frozenset[str]] = {}  # step -> every step whose output flows into it

    def upstream(step_id: str, visiting: frozenset[str] = frozenset()) -> frozenset[str]:
        if step_id in reaches:
            return reaches[step_id]
        if step_id not in steps or step_id in visiting:  # dangling or cyclic: refused elsewhere
            return frozenset()
        direct = {source for ids in directs[step_id].values() for source in ids}
        found = set(direct)
        for source in direct:
            found |= upstream(source, visiting | {step_id})
        reaches[step_id] = frozenset(found)
        return reaches[step_id]

    flows = {}
    for step in plan.steps:
        sources = {}
        for name, direct in directs[step.id].items():
            whole = set(direct)
            for source in direct:
                whole |= upstream(source)
            sources[name] = tuple(sorted(whole & steps.keys()))
        untrusted = {
            name: tuple(s for s in ids if s in untrusted_steps) for name, ids in sources.items()
        }
        flows[step.id] = StepFlow(sources, {k: v for k, v in untrusted.items() if v})
    return flows


def untrusted_reaches(plan: Plan, catalog: Mapping[str, ToolSpec], step_ids: Set[str]) -> bool:
    """Return True if an untrusted step's output reaches an input of any of `step_ids`.

    The same answer as asking `data_flow` for those steps' `untrusted_inputs`, found by
    walking up from them alone: the gate asks it of every plan's writes, and most plans have
    no untrusted step, or none above a write, so it is settled before the whole flow is built.
    """
    untrusted_steps = {step.id for step in plan.steps if _untrusted(step, catalog)}
    if not untrusted_steps or not step_ids:
        return False
    steps = {step.id: step for step in plan.steps}
    # Untrusted data stays untrusted through every step it passes, so it reaches a step
    # exactly when an untrusted step is among the steps upstream of it.
    seen: set[str] = set()
    above = [
        source
        for step_id in step_ids
        if step_id in steps
        for source in data_sources(steps[step_id])
    ]
    while above:
        step_id = above.pop()
        if step_id in seen or step_id not in steps:  # dangling or cyclic: refused elsewhere
            continue
        if step_id in untrusted_steps:
            return True
        seen.add(step_id)
        above.extend(data_sources(steps[step_id]))
    return False


def _direct(step: Step) -> dict[str, set[str]]:
    """Return the steps each input refers to directly (arguments by top-level name)."""
    direct = {
        name: {ref.step_id for ref in references_in(value)} for name, value in step.args.items()
    }
    if step.when:
        direct[CONDITION] = steps_in_condition(step.when)
    return {name: ids for name, ids in direct.items() if ids}


def _untrusted(step: Step, catalog: Mapping[str, ToolSpec]) -> bool:
    spec = catalog.get(step.tool)
    return spec is None or spec.output_trust == "untrusted"


def untrusted_sources(
    steps: list[Mapping[str, object]], catalog: Mapping[str, ToolSpec]
) -> dict[str, dict[str, list[str]]]:
    """Return, for a plan's steps as stored or shown, each input fed by untrusted steps.

    By step id, then input name (an argument, or `when`): the untrusted steps, each named as
    `id (tool)`, as the review shows them. Steps that do not parse are left out.
    """
    fields = set(Step.model_fields)
    parsed = []
    for step in steps:
        try:
            parsed.append(Step.model_validate({k: v for k, v in step.items() if k in fields}))
        except ValueError:
            continue
    tools = {step.id: step.tool for step in parsed}
    plan = Plan(plan_id="shown", goal_id="shown", revision=1, steps=tuple(parsed))
    return {
        step_id: {
            name: [f"{source} ({tools[source]})" for source in ids]
            for name, ids in flow.untrusted.items()
        }
        for step_id, flow in data_flow(plan, catalog).items()
        if flow.untrusted
    }
