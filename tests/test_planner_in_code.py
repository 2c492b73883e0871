"""A planner written in Python, given to `Pipeline(planner=...)`: its drafts are planned,
validated, hashed, decided and run as any plan's, its failures fail the goal as the built-in
planners' do, and one that can revise revises after a rejection or a failed run."""

from __future__ import annotations

import logging

import pytest

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import ConfigError
from plangate.planning import (
    Catalog,
    Draft,
    Feedback,
    GoalSubmitted,
    Plan,
    PlanningFailed,
    Step,
)
from plangate.tools import ToolRegistry, tool
from schemas import PlanInvalid, plan_hash, validate_plan
from tests.support import HELD, eventually, only_plan, running_pipeline


@tool(effect="read", idempotent=True)
def order_total(order_id: str) -> float:
    """Return an order's total; an order of a closed shop (`X-`) cannot be read."""
    if order_id.startswith("X-"):
        raise RuntimeError(f"order {order_id} is in a closed shop")
    return 42.5


@tool(effect="write")
def refund(order_id: str, amount: float) -> dict[str, str]:
    """Refund an order's amount."""
    return {"refunded": order_id}


TOOLS = ToolRegistry([order_total, refund])


def total_of(order: str) -> Step:
    return Step(id="total", tool="order_total", args={"order_id": order})


class RulesPlanner:
    """Plans by rules on the goal's words: a refund reads the total then refunds it, anything
    else reads the total; `no rule` is refused, `bug` is a bug in the rules engine (until
    it is `fixed`)."""

    def __init__(self) -> None:
        self.bugs = 0
        self.fixed = False

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        order = goal.text.split()[-1]
        if "no rule" in goal.text:
            raise PlanningFailed(["no rule matches this goal; add one to the rules engine"])
        if "bug" in goal.text and not self.fixed:
            self.bugs += 1
            raise KeyError("rule 17")
        steps = [total_of(order)]
        if goal.text.startswith("Refund"):
            args = {"order_id": order, "amount": "${total}"}
            steps.append(Step(id="refund", tool="refund", args=args))
        return Draft(summary=goal.text, steps=tuple(steps), planner="rules")


class RevisingRulesPlanner(RulesPlanner):
    """As RulesPlanner, and after feedback it plans only the read of the order in the goal's
    metadata (`fallback`), keeping the feedback it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.feedback: list[Feedback] = []

    def revise(self, goal: GoalSubmitted, catalog: Catalog, feedback: Feedback) -> Draft:
        self.feedback.append(feedback)
        order = goal.metadata["fallback"]
        return Draft(f"{goal.text} (read only)", (total_of(order),), planner="rules")


def test_a_pipeline_plans_with_the_planner_given_in_code_and_runs_its_plan(
    settings: Settings,
) -> None:
    """Given a pipeline with a rules planner of the user's own (not the settings' playbook),
    When a goal is submitted,
    Then the rules planner's plan runs, and the goal's status names it as the planner.
    """
    with running_pipeline(settings, registry=TOOLS, planner_in_code=RulesPlanner()) as pipeline:
        goal_id = pipeline.submit("What is the total of A-1001").goal_id
        outputs = pipeline.result(goal_id, timeout=10)
        status = pipeline.status(goal_id)

    assert outputs == {"total": 42.5}
    assert status.planner == "rules"
    assert status.summary == "What is the total of A-1001"


def test_a_write_plan_of_a_planner_in_code_is_hashed_held_by_the_policy_and_runs_once_approved(
    settings: Settings,
) -> None:
    """Given a rules planner drafting a refund (a write tool, which the default policy holds),
    When its goal is submitted, and a reviewer approves the held plan,
    Then it is held as any plan, under the canonical hash of the plan, and runs once approved.
    """
    with running_pipeline(settings, registry=TOOLS, planner_in_code=RulesPlanner()) as pipeline:
        goal_id = pipeline.submit("Refund order A-1001").goal_id
        pipeline.wait_for(goal_id, HELD, timeout=10)
        [held] = [h for h in pipeline.review.held() if h.goal.id == goal_id]
        plan = only_plan(pipeline.store, goal_id)
        pipeline.approve(held.plan.plan_id, "alice", expected_hash=plan_hash(plan))
        outputs = pipeline.result(goal_id, timeout=10)

    assert held.plan.plan_hash == plan_hash(plan)
    assert outputs == {"total": 42.5, "refund": {"refunded": "A-1001"}}


class CarelessPlanner:
    """Drafts a call of a tool the catalog does not have."""

    STEPS = (Step(id="wire", tool="wire_money", args={"to": "somewhere"}),)

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        return Draft("Wire the money", self.STEPS, planner="careless")


def test_an_invalid_draft_of_a_planner_in_code_fails_the_goal_as_the_validator_says(
    settings: Settings,
) -> None:
    """Given a planner in code whose draft calls a tool that is not in the catalog,
    When its goal is submitted,
    Then the goal fails to plan (nothing reaches the gate), with the validator's own words.
    """
    plan = Plan(plan_id="p", goal_id="g", revision=1, steps=CarelessPlanner.STEPS)
    with pytest.raises(PlanInvalid) as invalid:
        validate_plan(plan, TOOLS.catalog())

    with running_pipeline(settings, registry=TOOLS, planner_in_code=CarelessPlanner()) as pipeline:
        goal = pipeline.wait_for(pipeline.submit("Wire the money").goal_id, timeout=10)

    assert goal.status == "plan_failed"
    assert goal.status_reason == "; ".join(str(p) for p in invalid.value.problems)
    assert "wire_money" in (goal.status_reason or "")


def test_planning_failed_raised_by_a_planner_in_code_fails_the_goal_with_its_reason(
    settings: Settings,
) -> None:
    """Given a rules planner that refuses a goal no rule matches (PlanningFailed),
    When that goal is submitted,
    Then the goal ends `plan_failed` with the planner's reason, as a built-in planner's does.
    """
    with running_pipeline(settings, registry=TOOLS, planner_in_code=RulesPlanner()) as pipeline:
        goal = pipeline.wait_for(pipeline.submit("Something no rule knows").goal_id, timeout=10)

    assert goal.status == "plan_failed"
    assert goal.status_reason == "no rule matches this goal; add one to the rules engine"


def test_an_unexpected_error_of_a_planner_in_code_is_retried_then_dead_lettered_planning_goes_on(
    settings: Settings,
) -> None:
    """Given a rules planner with a bug (a KeyError for some goals), and two attempts a message,
    When such a goal is submitted, then another, and then the bug is fixed and the dead
    letter replayed,
    Then the goal is tried twice and its message dead-lettered with the error, the goal left
    `submitted`; the next goal plans and runs meanwhile; replayed, the goal plans and runs.
    """
    planner = RulesPlanner()
    changed = {"max_attempts": 2}
    with running_pipeline(settings, registry=TOOLS, planner_in_code=planner, **changed) as pipeline:
        broken = pipeline.submit("Total with a bug of A-1").goal_id
        [letter] = eventually(pipeline.bus.dead_letters, 10, "the goal's dead letter")
        later = pipeline.submit("What is the total of A-2").goal_id
        later_outputs = pipeline.result(later, timeout=10)
        status = pipeline.status(broken)
        planner.fixed = True
        [replayed] = pipeline.bus.replay_dead_letters()
        replayed_outputs = pipeline.result(broken, timeout=10)

    assert planner.bugs == 2
    assert letter.queue == f"{settings.namespace}.planner"
    assert letter.reason == "failed 2 times; last error: KeyError: 'rule 17'"
    assert status.status == "submitted"
    assert later_outputs == {"total": 42.5}
    assert replayed.message_id == letter.message_id
    assert replayed_outputs == {"total": 42.5}


def test_a_revising_planner_in_code_revises_the_plan_a_reviewer_rejected(
    settings: Settings,
) -> None:
    """Given a planner in code that can revise, and its refund held for a person,
    When a reviewer rejects the refund with a comment,
    Then the planner revises with that comment, and its revision 2 (a read) runs.
    """
    planner = RevisingRulesPlanner()
    with running_pipeline(settings, registry=TOOLS, planner_in_code=planner) as pipeline:
        goal_id = pipeline.submit("Refund order A-1001", metadata={"fallback": "A-1001"}).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=10)
        [held] = [h for h in pipeline.review.held() if h.goal.id == goal_id]
        pipeline.reject(held.plan.plan_id, "alice", "only read the total for now")
        # Waited for through `rejected`: the planner revises after it.
        pipeline.wait_for(goal_id, {"completed"}, timeout=10)
        outputs = pipeline.result(goal_id, timeout=10)
        status = pipeline.status(goal_id)

    [feedback] = planner.feedback
    assert (feedback.source, feedback.comment) == ("reviewer", "only read the total for now")
    assert feedback.previous.revision == 1
    assert (status.revision, status.summary) == (2, "Refund order A-1001 (read only)")
    assert outputs == {"total": 42.5}


def test_a_revising_planner_in_code_revises_a_failed_run_when_replanning_on_failure(
    settings: Settings,
) -> None:
    """Given a planner in code that can revise, and PLANGATE_REPLAN_ON_FAILURE set,
    When the run of its plan fails (the order's shop is closed),
    Then the planner revises with the run's failure, and its revision 2 runs.
    """
    planner = RevisingRulesPlanner()
    with running_pipeline(
        settings, registry=TOOLS, planner_in_code=planner, replan_on_failure=True
    ) as pipeline:
        goal_id = pipeline.submit("Total of X-1", metadata={"fallback": "A-1"}).goal_id
        pipeline.wait_for(goal_id, {"completed"}, timeout=10)  # through `failed`
        outputs = pipeline.result(goal_id, timeout=10)

    [feedback] = planner.feedback
    assert feedback.source == "execution"
    assert "closed shop" in feedback.comment
    assert outputs == {"total": 42.5}


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (RulesPlanner, "it was given the class RulesPlanner, not an instance of it"),
        (object(), "it was given object"),
    ],
)
def test_a_pipeline_refuses_a_planner_it_could_not_plan_with_as_it_is_made(
    settings: Settings, given: object, said: str
) -> None:
    """Given a class in place of a planner, or an object with no `draft` method,
    When a pipeline is made with it,
    Then a ConfigError says what `planner=` takes, before anything starts.
    """
    with pytest.raises(ConfigError) as refused:
        Pipeline(settings, registry=TOOLS, planner=given)  # type: ignore[arg-type]

    assert "planner= takes an object with a draft(goal, catalog) method" in str(refused.value)
    assert said in str(refused.value)


def test_replanning_on_failure_with_a_planner_in_code_that_cannot_revise_says_what_to_add(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Given PLANGATE_REPLAN_ON_FAILURE and a planner in code without `revise`,
    When the pipeline starts,
    Then it names that planner as planning, and warns that a failed run is not planned again
    unless the planner gets a `revise` method.
    """
    with (
        caplog.at_level(logging.INFO),
        running_pipeline(
            settings, registry=TOOLS, planner_in_code=RulesPlanner(), replan_on_failure=True
        ),
    ):
        pass

    said = [record.getMessage() for record in caplog.records]
    assert (
        "planning with the planner given in code (tests.test_planner_in_code.RulesPlanner), "
        "which takes no feedback"
    ) in said
    [warning] = [line for line in said if "PLANGATE_REPLAN_ON_FAILURE is set" in line]
    assert "a planner of your own with a `revise` method" in warning
