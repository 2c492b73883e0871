"""The embedded `Pipeline` as a library user meets it: several in one process, started and
stopped, interrupted, waited on and asked for results."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import ConfigError, GoalEnded, GoalWaiting, ToolLoadError
from plangate.goal_status import read_status
from plangate.pipeline_ending import STOP_GRACE_SECONDS
from plangate.store import open_store
from plangate.tools import ToolRegistry, tool

TOTAL_PLAYBOOK = """\
playbooks:
  - name: slow
    pattern: "slow total of order (?P<order>\\\\S+)"
    steps:
      - {id: total, tool: slow_total, args: {order_id: "{{order}}"}}
  - name: refund
    pattern: "refund order (?P<order>\\\\S+)"
    steps:
      - {id: total, tool: order_total, args: {order_id: "{{order}}"}}
      - {id: refund, tool: refund, args: {order_id: "{{order}}", amount: "${total}"}}
  - name: total
    pattern: "total of order (?P<order>\\\\S+)"
    steps:
      - {id: total, tool: order_total, args: {order_id: "{{order}}"}}
"""
# A slow tool's call under way, and the end of its wait (else it waits 20 s, as in the report).
CALLED, RELEASED = threading.Event(), threading.Event()


@tool(effect="read", idempotent=True)
def order_total(order_id: str) -> float:
    """Return an order's total."""
    return 42.5


@tool(effect="write")
def refund(order_id: str, amount: float) -> dict[str, str]:
    """Refund an order's amount."""
    return {"refunded": order_id}


@tool(effect="read", idempotent=True)
def slow_total(order_id: str) -> float:
    """Return an order's total, from a slow system."""
    CALLED.set()
    RELEASED.wait(20)
    return 42.5


@pytest.fixture
def library_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a library user writes them: a data folder and a playbook, no namespace."""
    monkeypatch.delenv("PLANGATE_NAMESPACE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (tmp_path / "playbook.yaml").write_text(TOTAL_PLAYBOOK)
    return Settings(data_dir=tmp_path / "first", playbook_file=tmp_path / "playbook.yaml")


def another(settings: Settings, folder: str) -> Settings:
    """The same settings on another data folder (another store, another signing key)."""
    return Settings(
        data_dir=settings.data_dir.parent / folder, playbook_file=settings.playbook_file
    )


def pipeline_of(settings: Settings) -> Pipeline:
    return Pipeline(settings, registry=ToolRegistry([order_total, slow_total, refund]))


def test_two_pipelines_in_one_process_each_carry_out_their_own_goals(
    library_settings: Settings,
) -> None:
    """Given two pipelines running side by side on the default memory broker and namespace,
    When goals are submitted to each,
    Then every goal completes in the pipeline it was submitted to (the memory broker is one
    per process: they took each other's messages, and 5 goals of 6 were lost).
    """
    with (
        pipeline_of(library_settings) as first,
        pipeline_of(another(library_settings, "second")) as second,
    ):
        goals = [
            (p, p.submit(f"the total of order A-{i}").goal_id)
            for i in range(3)
            for p in (first, second)
        ]
        statuses = [p.wait_for(goal_id, timeout=10).status for p, goal_id in goals]
    assert statuses == ["completed"] * 6


def test_a_pipeline_left_running_does_not_take_the_next_ones_goals(
    library_settings: Settings,
) -> None:
    """Given a pipeline started and never stopped (a test that failed before its end),
    When another pipeline, on its own data folder, runs a goal,
    Then the goal completes (its approval was taken by the one left running, refused there as
    signed by an unknown key, and reported as forged).
    """
    left = pipeline_of(another(library_settings, "left"))
    left.start()
    try:
        with pipeline_of(library_settings) as pipeline:
            goal_ids = [pipeline.submit(f"the total of order B-{i}").goal_id for i in range(3)]
            statuses = [pipeline.wait_for(goal_id, timeout=10).status for goal_id in goal_ids]
    finally:
        left.stop()
    assert statuses == ["completed"] * 3


@dataclass
class Interrupt:
    """The goal a block submitted, and when the block raised."""

    goal_id: str = ""
    at: float = 0.0


def interrupted_mid_call(pipeline: Pipeline, text: str, noted: Interrupt) -> None:
    """Submit `text` and raise KeyboardInterrupt in the block once its tool is being called."""
    with pipeline:
        noted.goal_id = pipeline.submit(text).goal_id
        assert CALLED.wait(10)
        noted.at = time.monotonic()
        raise KeyboardInterrupt


def test_an_exception_in_the_with_block_cancels_its_goals_and_ends_within_the_grace(
    library_settings: Settings,
) -> None:
    """Given a goal whose step, a 20 s tool call, is under way,
    When the `with Pipeline` block raises (Ctrl-C raises KeyboardInterrupt),
    Then the block ends within the steps' grace, not when the tool does, and the goal is
    cancelled (it waited 20 s, and the goal ran on to completion); a later `stop()` waits for
    what was left running and releases the rest.
    """
    CALLED.clear()
    RELEASED.clear()
    pipeline = pipeline_of(library_settings)
    interrupt = Interrupt()
    with pytest.raises(KeyboardInterrupt):
        interrupted_mid_call(pipeline, "the slow total of order C-1", interrupt)
    ended_after = time.monotonic() - interrupt.at
    RELEASED.set()
    assert pipeline.stop(timeout=10)

    assert ended_after < STOP_GRACE_SECONDS + 2, ended_after
    store = open_store(library_settings.resolved_database_url())
    try:
        with store.reading() as session:
            status = read_status(session, interrupt.goal_id)
    finally:
        store.close()
    assert status.status == "cancelled"
    assert "cancelled by pipeline: the `with Pipeline` block ended by KeyboardInterrupt" in str(
        status.reason
    )


def test_a_stopped_pipeline_refuses_goals_and_a_second_start(library_settings: Settings) -> None:
    """Given a pipeline that ran and was stopped,
    When a goal is submitted to it, or it is started again,
    Then each is refused with a ConfigError saying to make another (the goal was stored and
    never ran; the start returned, and its threads ended at once).
    """
    with pipeline_of(library_settings) as pipeline:
        goal_id = pipeline.submit("the total of order D-1").goal_id
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"

    with pytest.raises(ConfigError, match=r"this Pipeline is stopped: .*make another"):
        pipeline.submit("the total of order D-2")
    with pytest.raises(ConfigError, match="this Pipeline is stopped: a pipeline runs once"):
        pipeline.start()


def test_waiting_for_a_state_a_finished_goal_cannot_reach_ends_at_once(
    library_settings: Settings,
) -> None:
    """Given a goal that has completed,
    When the pipeline is asked to wait until it is held,
    Then GoalEnded says at once that it is completed, with the goal's id and state (it waited
    out the timeout, then said the goal "is still completed").
    """
    with pipeline_of(library_settings) as pipeline:
        goal_id = pipeline.submit("the total of order E-1").goal_id
        pipeline.wait_for(goal_id, timeout=10)
        began = time.monotonic()
        with pytest.raises(GoalEnded) as ended:
            pipeline.wait_for(goal_id, statuses={"held"}, timeout=10)
    assert time.monotonic() - began < 2
    assert (ended.value.goal_id, ended.value.status) == (goal_id, "completed")
    assert "will not become held" in str(ended.value)


def test_a_pipeline_says_where_a_goal_stands_and_its_result_as_a_client_does(
    library_settings: Settings,
) -> None:
    """Given a read-only goal and one whose refund the default policy holds for a person,
    When the pipeline is asked for their status and result,
    Then it answers as `Client` does: the steps' outputs by step id, a typed status with each
    step's result, and GoalWaiting at once for the held goal (it took reading the store with
    `read_status` in a session, and `wait_for` returned an ORM row).
    """
    with pipeline_of(library_settings) as pipeline:
        read_only = pipeline.submit("the total of order F-1").goal_id
        outputs = pipeline.result(read_only, timeout=10)
        status = pipeline.status(read_only)
        held = pipeline.submit("refund order F-2").goal_id
        with pytest.raises(GoalWaiting) as waiting:
            pipeline.result(held, timeout=10)
        pipeline.approve(pipeline.status(held).plan_id or "", "alice")
        refunded = pipeline.result(held, timeout=10)

    assert outputs == {"total": 42.5}
    assert (status.status, [(r.step_id, r.status, r.output) for r in status.results]) == (
        "completed",
        [("total", "succeeded", 42.5)],
    )
    assert waiting.value.status == "held"
    assert refunded == {"total": 42.5, "refund": {"refunded": "F-2"}}


def test_a_tool_registered_while_the_pipeline_runs_is_refused(library_settings: Settings) -> None:
    """Given a pipeline running with a registry,
    When a tool is registered into it,
    Then ToolLoadError says to register tools before starting (the tool was taken silently
    and was in no catalog: a plan calling it failed "not in the catalog"); once the pipeline
    stopped, the registry takes tools again.
    """
    registry = ToolRegistry([order_total])
    with (
        Pipeline(library_settings, registry=registry),
        pytest.raises(ToolLoadError, match="register every tool before starting it"),
    ):
        registry.register(refund)
    registry.register(refund)
    assert "refund" in registry
