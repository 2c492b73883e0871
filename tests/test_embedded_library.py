"""The embedded `Pipeline` as a library user meets it: several in one process, started and
stopped, interrupted, waited on and asked for results."""

from __future__ import annotations

from pathlib import Path

import pytest

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.tools import ToolRegistry, tool

TOTAL_PLAYBOOK = """\
playbooks:
  - name: total
    pattern: "total of order (?P<order>\\\\S+)"
    steps:
      - {id: total, tool: order_total, args: {order_id: "{{order}}"}}
"""


@tool(effect="read", idempotent=True)
def order_total(order_id: str) -> float:
    """Return an order's total."""
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
    return Pipeline(settings, registry=ToolRegistry([order_total]))


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
