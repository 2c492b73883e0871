"""The executor runs a plan as a DAG: independent steps at once, dependent ones in order."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from executor_worker.engine import DagWalk, StepOutcome
from plangate.config import Settings
from plangate.tools import ToolRegistry, tool
from schemas import Plan, Step
from tests.support import only_plan, running_pipeline, step_runs, write_playbook


def _plan(*steps: Step) -> Plan:
    """A plan of these steps (the walk needs no goal or catalog behind it)."""
    return Plan(plan_id="plan-1", goal_id="goal-1", revision=1, steps=steps)


def test_independent_steps_run_in_parallel(settings: Settings, tmp_path: Path) -> None:
    """Given two read steps that do not depend on each other, each of which waits at a barrier
    until the other has started too (a sequential engine would time out there),
    When a goal planned with both runs,
    Then both pass the barrier and the goal completes.
    """
    both_started = threading.Barrier(2, timeout=5)

    @tool(effect="read", idempotent=True)
    def left_census() -> int:
        """Count the left side, once the right side is counting too."""
        both_started.wait()
        return 1

    @tool(effect="read", idempotent=True)
    def right_census() -> int:
        """Count the right side, once the left side is counting too."""
        both_started.wait()
        return 2

    playbook = write_playbook(
        tmp_path,
        "census",
        [
            {"id": "left", "tool": "left_census"},
            {"id": "right", "tool": "right_census"},
        ],
    )
    registry = ToolRegistry([left_census, right_census])

    with running_pipeline(settings, playbook_file=playbook, registry=registry) as pipeline:
        goal_id = pipeline.submit("take the census").goal_id

        goal = pipeline.wait_for(goal_id, timeout=10)

        assert goal.status == "completed", goal.status_reason
        plan = only_plan(pipeline.store, goal_id)
        assert step_runs(pipeline.store, plan.plan_id) == {
            "left": "succeeded",
            "right": "succeeded",
        }
    assert not both_started.broken


def test_step_referencing_another_starts_after_it_finishes(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan where `double` takes `${base}` as its argument and `report` runs `after`
    `double`, next to an independent `noise` step,
    When it runs,
    Then `double` starts only after `base` finished, and `report` only after `double` did,
    with each output fed to the next.
    """
    events: list[str] = []
    lock = threading.Lock()

    def record(event: str) -> None:
        with lock:
            events.append(event)

    @tool(effect="read", idempotent=True)
    def base_value() -> int:
        """Return the base value."""
        record("base:start")
        record("base:end")
        return 21

    @tool(effect="read", idempotent=True)
    def doubled(value: int) -> int:
        """Return twice `value`."""
        record(f"double:start:{value}")
        record("double:end")
        return value * 2

    @tool(effect="read", idempotent=True)
    def report_done() -> str:
        """Say that everything before it finished."""
        record("report:start")
        return "done"

    @tool(effect="read", idempotent=True)
    def noise() -> str:
        """Do something unrelated."""
        record("noise:start")
        return "noise"

    playbook = write_playbook(
        tmp_path,
        "chain",
        [
            {"id": "base", "tool": "base_value"},
            {"id": "noise", "tool": "noise"},
            {"id": "double", "tool": "doubled", "args": {"value": "${base}"}},
            {"id": "report", "tool": "report_done", "after": ["double"]},
        ],
    )
    registry = ToolRegistry([base_value, doubled, report_done, noise])

    with running_pipeline(settings, playbook_file=playbook, registry=registry) as pipeline:
        goal_id = pipeline.submit("run the chain").goal_id

        goal = pipeline.wait_for(goal_id, timeout=10)

    assert goal.status == "completed", goal.status_reason
    assert "double:start:21" in events
    assert events.index("base:end") < events.index("double:start:21")
    assert events.index("double:end") < events.index("report:start")
    assert "noise:start" in events


def test_a_step_is_under_way_before_the_step_it_waited_on_is_announced() -> None:
    """Given a plan where `second` runs after `first`, and an announcement of each finished step
    that, for `first`, lasts until `second` has started (as a slow broker round trip would),
    When the plan is walked,
    Then the announcement does not hold `second` back: it starts while `first` is announced,
    and the steps are announced in the order they finished.
    """
    second_started = threading.Event()
    announced: list[str] = []
    second_was_under_way: list[bool] = []

    class Walk(DagWalk):
        def _call(self, step: Step, args: dict[str, Any]) -> StepOutcome:
            if step.id == "second":
                second_started.set()
            return StepOutcome(step.id, step.tool, "succeeded", output=step.id)

    def announce(outcome: StepOutcome) -> None:
        if outcome.step_id == "first":
            second_was_under_way.append(second_started.wait(timeout=5))
        announced.append(outcome.step_id)

    plan = _plan(
        Step(id="first", tool="census"), Step(id="second", tool="census", after=("first",))
    )
    with ThreadPoolExecutor(2) as pool:
        outcomes = Walk(plan, pool, announce).run()

    assert second_was_under_way == [True]
    assert announced == ["first", "second"]
    assert {step_id: o.status for step_id, o in outcomes.items()} == {
        "first": "succeeded",
        "second": "succeeded",
    }


def test_a_when_reading_a_field_the_output_lacks_fails_that_step_and_the_goal(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan whose `report` step runs `when: steps.census.output.count > 0`, and a
    `census` that answers `{}` (no `count`; CEL raises KeyError there, not a CEL error),
    When the goal runs,
    Then `report` fails saying why, and the goal ends failed at once (it is not retried).
    """

    @tool(effect="read", idempotent=True)
    def census() -> dict[str, int]:
        """Count nothing."""
        return {}

    @tool(effect="read", idempotent=True)
    def census_report() -> str:
        """Report the census."""
        return "reported"

    playbook = write_playbook(
        tmp_path,
        "census",
        [
            {"id": "census", "tool": "census"},
            {
                "id": "report",
                "tool": "census_report",
                "when": "steps.census.output.count > 0",
            },
        ],
    )
    registry = ToolRegistry([census, census_report])

    with running_pipeline(settings, playbook_file=playbook, registry=registry) as pipeline:
        goal_id = pipeline.submit("take the census").goal_id

        goal = pipeline.wait_for(goal_id, timeout=10)

        assert goal.status == "failed"
        assert "report" in (goal.status_reason or "")
        assert "KeyError" in (goal.status_reason or "")
        plan = only_plan(pipeline.store, goal_id)
        assert step_runs(pipeline.store, plan.plan_id) == {
            "census": "succeeded",
            "report": "failed",
        }


def test_a_run_that_stops_short_leaves_no_step_running_and_announces_what_finished() -> None:
    """Given a plan of `slow`, beside `first` then `skipped` (`when: false`), where recording
    `skipped` fails (as a store outage would) while `slow` is still running,
    When the plan is walked,
    Then the walk raises, but only once `slow` has finished (no step runs on behind it), and
    `first`, which did finish, is announced.
    """
    slow_may_finish = threading.Event()
    slow_finished = threading.Event()
    announced: list[str] = []

    class Walk(DagWalk):
        def _call(self, step: Step, args: dict[str, Any]) -> StepOutcome:
            if step.id == "slow":
                slow_may_finish.wait(timeout=5)
                slow_finished.set()
            return StepOutcome(step.id, step.tool, "succeeded")

        def _settled(self, step: Step, outcome: StepOutcome) -> None:
            slow_may_finish.set()
            raise ConnectionError("the store went away")

    plan = _plan(
        Step(id="slow", tool="census"),
        Step(id="first", tool="census"),
        Step(id="skipped", tool="census", after=("first",), when="false"),
    )
    with ThreadPoolExecutor(2) as pool:
        walk = Walk(plan, pool, lambda outcome: announced.append(outcome.step_id))
        with pytest.raises(ConnectionError):
            walk.run()
        slow_was_done = slow_finished.is_set()

    assert slow_was_done
    assert announced == ["first"]


def test_a_step_alone_is_called_in_the_walking_thread_and_side_by_side_steps_in_the_pool() -> None:
    """Given a plan `first`, then `left` and `right` side by side, then `last` after both,
    When the plan is walked from one thread,
    Then `first` and `last`, each the only step under way, are called in that thread (no
    hand-off to the pool and back on the run's path), `left` and `right` in pool threads, and
    every step is announced once, in the order the steps finished.
    """
    called_in: dict[str, threading.Thread] = {}
    announced: list[str] = []

    class Walk(DagWalk):
        def _call(self, step: Step, args: dict[str, Any]) -> StepOutcome:
            called_in[step.id] = threading.current_thread()
            return StepOutcome(step.id, step.tool, "succeeded", output=step.id)

    plan = _plan(
        Step(id="first", tool="census"),
        Step(id="left", tool="census", after=("first",)),
        Step(id="right", tool="census", after=("first",)),
        Step(id="last", tool="census", after=("left", "right")),
    )
    with ThreadPoolExecutor(2) as pool:
        Walk(plan, pool, lambda outcome: announced.append(outcome.step_id)).run()

    walking = threading.current_thread()
    assert called_in["first"] is walking
    assert called_in["last"] is walking
    assert called_in["left"] is not walking
    assert called_in["right"] is not walking
    assert announced[0] == "first"
    assert sorted(announced[1:3]) == ["left", "right"]
    assert announced[3] == "last"


def test_announcements_made_beside_the_next_steps_keep_their_order_when_one_is_slow() -> None:
    """Given `first`, `second`, `third` one after another, two announcer threads, and an
    announcement of `first` that is slow (it waits, up to a bound, for `third` to be called),
    When the plan is walked,
    Then `third` is not called before `first` is told (an announcement waits for the one
    before it), and observers hear of the steps in the order they finished.
    """
    third_called = threading.Event()
    announced: list[str] = []

    class Walk(DagWalk):
        def _call(self, step: Step, args: dict[str, Any]) -> StepOutcome:
            if step.id == "third":
                third_called.set()
            return StepOutcome(step.id, step.tool, "succeeded")

    def announce(outcome: StepOutcome) -> None:
        if outcome.step_id == "first":
            third_called.wait(timeout=0.3)  # no third step comes while this one is told
            announced.append("first" if not third_called.is_set() else "first, late")
            return
        announced.append(outcome.step_id)

    plan = _plan(
        Step(id="first", tool="census"),
        Step(id="second", tool="census", after=("first",)),
        Step(id="third", tool="census", after=("second",)),
    )
    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(2) as announcer:
        Walk(plan, pool, announce, announcer=announcer).run()

    assert announced == ["first", "second", "third"]
