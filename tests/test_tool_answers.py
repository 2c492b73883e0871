"""A tool's answer plangate cannot keep fails its step in one line; it never stops the run.

Bytes that are not UTF-8, or an exception whose message cannot be said, made the executor's
handler fail: the plan was retried, then dead-lettered, `plangate run` waited out its timeout,
and a write that had taken effect kept its claim, `running` for good.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from plangate.config import Settings
from plangate.errors import OutputUnusable
from plangate.store import GoalRow, StepRunRow, audit_records, open_store
from plangate.tools import ToolContext, ToolRegistry, tool
from tests.support import only_plan, running_pipeline, write_yaml

APPROVE_ALL = {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "test"}]}
WRITES: list[str] = []


class Unsayable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words")


@tool(effect="read")
def raw_read() -> bytes:
    """Answer with bytes that are not UTF-8."""
    return b"\xff\x00abc"


@tool(effect="write", idempotent=True)
def raw_write() -> bytes:
    """Take effect, then answer with bytes that are not UTF-8."""
    WRITES.append("written")
    return b"\xff\xfe raw"


@tool(effect="read")
def unsayable_read() -> int:
    """Fail with an exception whose message cannot be made."""
    raise Unsayable()


@tool(effect="read")
def nan_read() -> float:
    """Answer with NaN."""
    return math.nan


@tool(effect="read")
def wide_numbers_read() -> dict[str, Any]:
    """Answer with numbers a JSON column may give back in another form."""
    return {"id": 2**60, "big": 1e16, "huge": 1e300, "small": 1e-7, "nested": [1.0, -0.0, 0.1]}


@tool(effect="write", idempotent=True)
def infinite_write() -> dict[str, float]:
    """Take effect, then answer with an infinity."""
    WRITES.append("written")
    return {"v": math.inf}


def run_step(settings: Settings, tmp_path: Path, tool_name: str) -> tuple[GoalRow, StepRunRow]:
    """Run a one-step plan of `tool_name`, approved; return the goal and its step."""
    playbook = write_yaml(
        tmp_path / "playbook.yaml",
        {"playbooks": [{"name": "p", "pattern": "go", "steps": [{"id": "s", "tool": tool_name}]}]},
    )
    policy = write_yaml(tmp_path / "policy.yaml", APPROVE_ALL)
    registry = ToolRegistry(
        [raw_read, raw_write, unsayable_read, nan_read, infinite_write, wide_numbers_read]
    )
    with running_pipeline(
        settings, playbook_file=playbook, policy_file=policy, registry=registry
    ) as pipeline:
        goal = pipeline.wait_for(pipeline.submit("go").goal_id, timeout=10)
        plan_id = only_plan(pipeline.store, goal.id).plan_id
        with pipeline.store.session() as session:
            step = session.query(StepRunRow).filter_by(plan_id=plan_id, step_id="s").one()
        return goal, step


@pytest.mark.parametrize(
    ("tool_name", "said"),
    [
        ("raw_read", "tool raw_read returned a non-JSON value"),
        ("unsayable_read", "tool unsayable_read failed: Unsayable"),
    ],
    ids=["bytes-not-text", "exception-that-cannot-say-its-message"],
)
def test_a_read_whose_answer_cannot_be_kept_fails_its_step(
    settings: Settings, tmp_path: Path, tool_name: str, said: str
) -> None:
    """Given a read answering bytes that are not UTF-8, or failing with an exception whose
    message cannot be made, Then its step fails saying so, and the goal with it."""
    goal, step = run_step(settings, tmp_path, tool_name)

    assert goal.status == "failed"
    assert step.status == "failed"
    assert said in (step.error or "")


def test_a_write_answering_bytes_that_are_not_text_succeeds_without_its_output(
    settings: Settings, tmp_path: Path
) -> None:
    """The write took effect: it succeeded, once, and its record says its output was not kept."""
    WRITES.clear()
    goal, step = run_step(settings, tmp_path, "raw_write")

    assert goal.status == "completed"
    assert step.status == "succeeded"
    assert step.output is None
    assert "the write took effect, its output was not kept" in (step.error or "")
    assert WRITES == ["written"]


def test_nan_or_an_infinity_is_not_kept_as_null(settings: Settings, tmp_path: Path) -> None:
    """Given a read answering NaN, and a write answering {"v": inf},
    Then the read fails saying JSON cannot hold it, and the write succeeds without its output;
    each was kept as null, a step succeeded with data other than the tool returned.
    """
    (tmp_path / "read").mkdir()
    (tmp_path / "write").mkdir()
    goal, step = run_step(settings, tmp_path / "read", "nan_read")
    assert (goal.status, step.status, step.output) == ("failed", "failed", None)
    assert "returned NaN or an infinity" in (step.error or "")

    WRITES.clear()
    goal, step = run_step(settings, tmp_path / "write", "infinite_write")
    assert (goal.status, step.status, step.output) == ("completed", "succeeded", None)
    assert "the write took effect, its output was not kept" in (step.error or "")
    assert WRITES == ["written"]


@dataclasses.dataclass
class Reading:
    value: float


class Summary(BaseModel):
    mean: float
    readings: list[Reading]


@pytest.mark.parametrize(
    "answer",
    [Reading(math.nan), Summary(mean=1.0, readings=[Reading(math.inf)])],
    ids=["dataclass-field", "model-nested-in-a-list"],
)
def test_nan_inside_a_returned_object_is_found_too(answer: object) -> None:
    """NaN or an infinity in a dataclass's or a model's field was kept as null: only plain
    numbers, lists and dicts were looked into. The answer's dump is looked into now."""

    @tool(effect="read")
    def measure() -> Any:
        """Measure."""
        return answer

    @tool(effect="read")
    def typed_measure() -> Reading | Summary:
        """Measure, typed."""
        return answer  # type: ignore[return-value]

    context = ToolContext(goal_id="g", plan_id="p", step_id="s", idempotency_key="k")
    for call in (measure, typed_measure):
        with pytest.raises(OutputUnusable, match="returned NaN or an infinity"):
            call.invoke({}, context)


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_numbers_past_a_double_or_in_another_form_are_recorded_and_verify(
    settings: Settings, tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """Given a read answering an id of 2**60, 1e16, 1e300 and -0.0,
    When its step is recorded (its output's digest in its audit entry), Then the goal
    completes and `audit verify`'s records check finds the output as recorded, on SQLite and
    in PostgreSQL's jsonb (which writes 1e16 as 10000000000000000): the digest refused
    integers past 2**53, and the step was never recorded, its goal `running` for good.
    """
    if database == "postgres":
        settings = settings.model_copy(
            update={"database_url": request.getfixturevalue("postgres_database_url")}
        )
    goal, step = run_step(settings, tmp_path, "wide_numbers_read")

    assert (goal.status, step.status) == ("completed", "succeeded")
    assert step.output["id"] == 2**60
    store = open_store(settings.resolved_database_url(), upgrade=False)
    try:
        assert audit_records.disagreement(store) is None
    finally:
        store.close()
