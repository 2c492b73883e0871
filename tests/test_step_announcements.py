"""`step.finished` is progress for observers: a broker that does not take it stops nothing."""

from __future__ import annotations

import logging
import time

import pytest

from executor_worker.engine import StepOutcome
from executor_worker.handler import ExecutorHandler
from plangate.bus import Envelope, Observer
from plangate.embedded import Pipeline
from plangate.errors import BrokerUnavailable
from plangate.signing import TrustedKeys
from plangate.store import Store
from plangate.tools import load_tools
from schemas import Message
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan


def test_a_step_the_broker_would_not_take_is_said_in_one_line_without_a_traceback(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """During a Redis outage each step's announcement logged a 15 KB traceback ending in
    BrokerUnavailable, a warning that read as if something needed doing. One line says what
    happened and that nothing does."""

    def unreachable(envelope: Envelope) -> None:
        raise BrokerUnavailable("the broker does not answer (Connection refused)")

    tools = load_tools(["plangate.demo.tools"])
    handler = ExecutorHandler(store, tools, TrustedKeys(), notify=unreachable)
    outcome = StepOutcome("count", "ticket_count", "succeeded", output={"count": 3})
    with caplog.at_level(logging.WARNING, logger="executor_worker.handler"):
        handler._step_finished("g1", "p1", outcome)

    [record] = caplog.records
    assert record.exc_info is None
    said = record.getMessage()
    assert said.startswith("could not announce step count to observers (the broker does not")
    assert "nothing to do" in said


def run_news(observer: Observer, goal_id: str, steps: int, timeout: float = 10.0) -> list[Message]:
    """Every message of the goal the observer sees, until its run's end and `steps` steps."""
    seen: list[Message] = []
    deadline = time.monotonic() + timeout

    def all_in() -> bool:
        kinds = [getattr(m, "type", "") for m in seen]
        return "execution.completed" in kinds and kinds.count("step.finished") >= steps

    while not all_in() and (left := deadline - time.monotonic()) > 0:
        message = observer.next(timeout=left)
        if message is not None and message.goal_id == goal_id:
            seen.append(message)
    assert all_in(), [getattr(m, "type", "") for m in seen]
    return seen


def test_every_step_of_a_run_finished_before_the_run_ended_as_observers_read_it(
    pipeline: Pipeline,
) -> None:
    """Given the seed goal's plan held (count, sla, then notify: a write, its last step),
    And an observer of the bus,
    When alice approves it and it runs to completion,
    Then each `step.finished` it hears says its step ended no later than the run's
    `execution.completed`: the last steps, announced after the run's end, were stamped with
    the time of their announcement, and an observer ordering by `occurred_at` saw the run end
    before its last step.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    plan = only_plan(pipeline.store, goal_id)

    with pipeline.bus.observe() as observer:
        pipeline.approve(plan.plan_id, "alice")
        news = run_news(observer, goal_id, steps=len(plan.steps))

    [completed] = [m for m in news if getattr(m, "type", "") == "execution.completed"]
    finished = {
        getattr(m, "step_id", ""): m.occurred_at
        for m in news
        if getattr(m, "type", "") == "step.finished"
    }
    assert set(finished) == {"count", "sla", "notify"}
    late = {step: at for step, at in finished.items() if at > completed.occurred_at}
    assert late == {}, f"run ended at {completed.occurred_at}"
