"""A planner's draft made a plan: numbered, redacted and validated, or the goal's failure.

Nothing invalid leaves the planner, and nothing a model copied from a secret it was sent.
"""

from __future__ import annotations

from pydantic import ValidationError

from plangate.errors import PlanningFailed, describe
from plangate.redaction import redact, redact_json
from planner_worker.planner import Draft
from schemas import Catalog, Plan, PlanInvalid, Step, new_id, validate_plan


def validated_plan(draft: Draft, goal_id: str, revision: int, catalog: Catalog) -> Plan:
    """Return the draft numbered as a plan, validated: nothing invalid leaves the planner.

    A model may write a secret it was sent (the API key a server echoes) into its plan: it is
    redacted before reviewers, the audit log or a tool see it.
    """
    try:
        plan = Plan(
            plan_id=new_id(),
            goal_id=goal_id,
            revision=revision,
            summary=redact(draft.summary),
            steps=tuple(_redacted_step(step) for step in draft.steps),
        )
    except ValidationError as exc:
        # A playbook fills its summary from the goal's words: a long goal can make a plan no
        # stage accepts. Raised, it failed the message on every resend and the goal stayed
        # `submitted`; it is the goal's failure, said in the plan's own words.
        raise PlanningFailed([f"the plan is not valid: {describe(exc)}"]) from exc
    try:
        validate_plan(plan, catalog)
    except PlanInvalid as invalid:
        raise PlanningFailed([str(p) for p in invalid.problems]) from invalid
    return plan


def _redacted_step(step: Step) -> Step:
    if redact(step.id) != step.id:
        # An id is referred to by others (`after`, `${id}`): it cannot be redacted, only refused.
        raise PlanningFailed(["a step's id quotes a secret plangate knows; the plan is refused"])
    args, when = redact_json(step.args), redact(step.when) if step.when else step.when
    if args is step.args and when == step.when:
        return step
    return step.model_copy(update={"args": args, "when": when})
