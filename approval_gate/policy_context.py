"""What a policy's rules see: the CEL variables built from a plan, its goal and the catalog."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from schemas import Plan, Step, ToolSpec
from schemas.cel_check import ANY, ListOf, MapOf, Reads, Shape
from schemas.data_flow import StepFlow, data_flow, untrusted_reaches

# An unknown tool might do anything, so it reads as a write that no rule can trust.
UNKNOWN_TOOL_TAG = "unknown-tool"  # the tag a step of a tool not in the catalog reads as having
_UNKNOWN_TOOL = ToolSpec(name="unknown", effect="write", idempotent=False, tags=(UNKNOWN_TOOL_TAG,))
# What a rule may read (as `policy_context` builds it): anything else is a mistake in the rule.
_STEP: dict[str, Shape] = {"id": str, "tool": str, "args": ANY, "when": str} | {
    "effect": str,
    "idempotent": bool,
    "tags": ListOf(str),
    "inputs": MapOf(ListOf(str)),
    "untrusted_inputs": ListOf(str),
}
RULE_VARIABLES: dict[str, Shape] = {
    "plan": {
        "plan_id": str,
        "goal_id": str,
        "revision": int,
        "summary": str,
        "steps": ListOf(_STEP),
        "writes_from_untrusted": bool,
    },
    "goal": {"text": str, "metadata": MapOf(str)},
    "tools": MapOf(dict.fromkeys(ToolSpec.model_fields, ANY)),
    "history": ANY,  # history.count(tool, window), history.sum(tool, arg, window, key)
}


def policy_context(
    plan: Plan,
    catalog: Mapping[str, ToolSpec],
    goal_text: str = "",
    goal_metadata: Mapping[str, str] | None = None,
    *,
    needed: Collection[str] = ("plan", "goal", "tools"),
    reads: Reads | None = None,
) -> dict[str, Any]:
    """Return the CEL variables a rule sees: `plan` (steps enriched from specs), `goal`, `tools`.

    Only the `needed` ones are built, and of the plan only the fields in `reads` (all without).
    """
    variables: dict[str, Any] = {}
    if "goal" in needed:
        variables["goal"] = {"text": goal_text, "metadata": dict(goal_metadata or {})}
    if "tools" in needed:
        variables["tools"] = {name: spec.model_dump(mode="json") for name, spec in catalog.items()}
    if "plan" in needed:
        reads = reads or Reads(whole=frozenset({"plan"}))
        variables["plan"] = _plan_variable(
            plan, catalog, reads.fields_of("plan"), reads.fields_of("plan.steps[]")
        )
    return variables


# How each field of a step as rules see it (`_STEP`) is made: from the step, its tool's spec
# and the data that flows into it.
_STEP_FIELDS: dict[str, Callable[[Step, ToolSpec, StepFlow], Any]] = {
    "id": lambda step, spec, flow: step.id,
    "tool": lambda step, spec, flow: step.tool,
    "args": lambda step, spec, flow: step.model_dump(mode="json", include={"args"})["args"],
    "when": lambda step, spec, flow: step.when or "",
    "effect": lambda step, spec, flow: spec.effect,
    "idempotent": lambda step, spec, flow: spec.idempotent,
    "tags": lambda step, spec, flow: list(spec.tags),
    "inputs": lambda step, spec, flow: {name: list(ids) for name, ids in flow.sources.items()},
    "untrusted_inputs": lambda step, spec, flow: list(flow.untrusted_inputs),
}
_FLOW_FIELDS = frozenset({"inputs", "untrusted_inputs"})
_NO_FLOW = StepFlow()


def _plan_variable(
    plan: Plan,
    catalog: Mapping[str, ToolSpec],
    plan_fields: frozenset[str] | None = None,
    step_fields: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Build `plan` for the rules: the named fields of it and of its steps (None: all)."""
    wanted_plan = set(RULE_VARIABLES["plan"]) if plan_fields is None else plan_fields
    wanted_step = list(_STEP_FIELDS) if step_fields is None else list(step_fields)
    # Following references through the plan is the dearest part: done only if it is read.
    flows = data_flow(plan, catalog) if _FLOW_FIELDS & set(wanted_step) else {}
    variable: dict[str, Any] = {}
    for name in wanted_plan & {"plan_id", "goal_id", "revision", "summary"}:
        variable[name] = getattr(plan, name)
    if "steps" in wanted_plan:
        variable["steps"] = [
            {
                name: _STEP_FIELDS[name](
                    step, catalog.get(step.tool, _UNKNOWN_TOOL), flows.get(step.id, _NO_FLOW)
                )
                for name in wanted_step
            }
            for step in plan.steps
        ]
    if "writes_from_untrusted" in wanted_plan:
        writes = {
            step.id
            for step in plan.steps
            if catalog.get(step.tool, _UNKNOWN_TOOL).effect == "write"
        }
        variable["writes_from_untrusted"] = untrusted_reaches(plan, catalog, writes)
    return variable
