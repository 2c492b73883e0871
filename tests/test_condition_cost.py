"""A step's condition over a large output is bounded: no output stalls the executor.

This CEL runtime builds a `map` or `filter` by copying what it made so far at each item, so
over an output of 60,000 items one `when` would hold the executor (GIL and all) for a minute.
"""

from __future__ import annotations

from pathlib import Path

from plangate.config import Settings
from plangate.tools import ToolRegistry, tool
from schemas.cel_cost import condition_too_costly
from tests.support import running_pipeline, write_playbook, write_yaml

APPROVE_ALL = {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "t"}]}


@tool(effect="read")
def many_numbers() -> list[int]:
    """Return a long list, as an export of a big table does."""
    return [1] * 60_000


@tool(effect="read")
def follow_up() -> str:
    """Run after the list, when the condition lets it."""
    return "done"


def test_a_filter_over_a_huge_output_fails_its_step_at_once_saying_why(
    settings: Settings, tmp_path: Path
) -> None:
    steps = [
        {"id": "big", "tool": "many_numbers"},
        {"id": "next", "tool": "follow_up", "when": "size(steps.big.output.filter(t, t > 0)) > 0"},
    ]
    with running_pipeline(
        settings,
        registry=ToolRegistry([many_numbers, follow_up]),
        playbook_file=write_playbook(tmp_path, "numbers", steps),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
    ) as pipeline:
        goal_id = pipeline.submit("numbers").goal_id
        goal = pipeline.wait_for(goal_id, timeout=20)

    assert goal.status == "failed"
    said = goal.status_reason or ""
    assert "step 'next' failed: `when` was not evaluated: it may take up to" in said


def test_a_filter_over_an_output_of_the_usual_size_is_evaluated() -> None:
    outputs = {"steps": {"big": {"output": list(range(500)), "status": "succeeded"}}}

    assert condition_too_costly("size(steps.big.output.filter(t, t > 0)) > 0", outputs) is None
    assert condition_too_costly("steps.big.output.exists(t, t > 0)", {"steps": {}}) is None


def test_only_the_outputs_a_condition_reads_are_measured() -> None:
    """A two-item output was refused a filter because another step's output had 20,000 rows."""
    outputs = {
        "steps": {
            "check": {"output": [True, False], "status": "succeeded"},
            "rows": {"output": list(range(20_000)), "status": "succeeded"},
        }
    }

    assert condition_too_costly("size(steps.check.output.filter(x, x)) > 0", outputs) is None
    assert condition_too_costly("size(steps.rows.output.filter(x, x > 0)) > 0", outputs)


def test_an_output_joined_to_itself_many_times_is_measured_as_the_joined_list() -> None:
    """`+` copies: 57 copies of a 100,000-number output held the executor 6 s, no map or
    filter in sight."""
    outputs = {"steps": {"a": {"output": list(range(100_000)), "status": "succeeded"}}}
    joined = "size(" + " + ".join(["steps.a.output"] * 57) + ") > 0"

    assert condition_too_costly(joined, outputs) is not None
    assert condition_too_costly("size(steps.a.output) > 0", outputs) is None


def test_a_when_calling_matches_more_than_twice_is_refused() -> None:
    from schemas.validation import _condition_problems

    when = " || ".join(['string(steps.a.output).matches("^a")'] * 3)

    assert "calls matches() 3 times; at most 2" in _condition_problems(when)[0]
