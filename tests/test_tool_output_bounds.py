"""What a tool hands back is bounded: its output, its error text and a preview's whole.

A tool's answer is stored, announced on `step.finished` and read by conditions; a remote
server decides it. A huge answer must not fill the store or make a message no observer takes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import select

from executor_worker.output_bounds import (
    MAX_ERROR_CHARS,
    MAX_OUTPUT_BYTES,
    PREVIEW_BUDGET_BYTES,
    json_size,
    kept_error,
)
from executor_worker.preview import within_budget
from plangate.config import Settings
from plangate.errors import ToolError
from plangate.redaction import REDACTED, register_secret
from plangate.store import GoalRow, StepRunRow
from plangate.tools import ToolRegistry, tool
from schemas import StepPreview
from tests.oversized_write_tools import TOO_BIG, huge_write
from tests.support import only_plan, plangate_in, running_pipeline, write_yaml

APPROVE_ALL = {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "test"}]}
ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-token-for-the-bound-test"


@tool(effect="read")
def huge_read() -> str:
    """Answer with more than plangate keeps."""
    return TOO_BIG


@tool(effect="read")
def echo_error() -> str:
    """Fail, quoting a secret and a megabyte of what a server sent back."""
    raise ToolError(f"server said: token {SECRET} " + "y" * 1_000_000)


@tool(effect="read")
def echo_text(text: str) -> str:
    """Answer with the text it was given."""
    return text


@tool(effect="read")
def small_read() -> int:
    """Answer with little."""
    return 3


def _playbooks(folder: Path) -> Path:
    return write_yaml(
        folder / "playbook.yaml",
        {
            "playbooks": [
                {"name": "r", "pattern": "big read", "steps": [{"id": "r", "tool": "huge_read"}]},
                {
                    "name": "w",
                    "pattern": "big write",
                    "steps": [{"id": "w", "tool": "huge_write"}, {"id": "s", "tool": "small_read"}],
                },
                {"name": "e", "pattern": "echo", "steps": [{"id": "e", "tool": "echo_error"}]},
                {
                    "name": "reads-it",
                    "pattern": "feed on a huge answer",
                    "steps": [
                        {"id": "w", "tool": "huge_write"},
                        {"id": "echo", "tool": "echo_text", "args": {"text": "${w}"}},
                        {"id": "s", "tool": "small_read", "after": ["w"]},
                    ],
                },
            ]
        },
    )


def _run(settings: Settings, tmp_path: Path, text: str) -> tuple[GoalRow, dict[str, StepRunRow]]:
    """Run goal `text` with this file's tools and playbooks, every plan approved."""
    registry = ToolRegistry([huge_read, huge_write, echo_error, echo_text, small_read])
    policy = write_yaml(tmp_path / "policy.yaml", APPROVE_ALL)
    with running_pipeline(
        settings, playbook_file=_playbooks(tmp_path), policy_file=policy, registry=registry
    ) as pipeline:
        goal = pipeline.wait_for(pipeline.submit(text).goal_id, timeout=10)
        return goal, _steps(pipeline, goal.id)


def _steps(pipeline: Any, goal_id: str) -> dict[str, StepRunRow]:
    plan_id = only_plan(pipeline.store, goal_id).plan_id
    with pipeline.store.session() as session:
        rows = session.execute(select(StepRunRow).where(StepRunRow.plan_id == plan_id)).scalars()
        return {row.step_id: row for row in rows}


def test_a_read_over_the_output_limit_fails_saying_what_to_return_instead(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a read tool that returns one byte more than the limit,
    When a goal runs it,
    Then the step fails, its output is not stored, and the goal's reason gives the size, the
    limit and what to return instead.
    """
    goal, steps = _run(settings, tmp_path, "a big read")
    step = steps["r"]

    assert goal.status == "failed"
    assert f"the limit is {MAX_OUTPUT_BYTES}" in (goal.status_reason or "")
    assert "a reference to the data" in (goal.status_reason or "")
    assert step.status == "failed"
    assert step.output is None


def test_a_write_over_the_output_limit_succeeds_without_its_output(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a write tool that takes effect and returns more than the limit,
    When a goal runs it,
    Then the step succeeded (the write happened and must not be run again), its output is not
    kept, its record says why, and the goal goes on to complete.
    """
    goal, steps = _run(settings, tmp_path, "a big write")

    assert goal.status == "completed"
    assert steps["w"].status == "succeeded"
    assert steps["w"].output is None
    assert "the write took effect, its output was not kept" in (steps["w"].error or "")
    assert steps["s"].output == 3


def test_run_and_status_show_why_a_write_over_the_output_limit_has_no_output(
    tmp_path: Path,
) -> None:
    """Given a write tool that takes effect and returns more than the limit,
    When `plangate run` runs it, and `plangate status` shows the goal,
    Then both show, on the step's line, that the write took effect and its output was not
    kept: they showed `null` (`-> null`), as if the tool had answered nothing, and the note
    was in `--json` only.
    """
    playbook = write_yaml(
        tmp_path / "playbook.yaml",
        {
            "playbooks": [
                {"name": "w", "pattern": "big write", "steps": [{"id": "w", "tool": "huge_write"}]}
            ]
        },
    )
    tools = {"PLANGATE_TOOLS": "tests.oversized_write_tools", "PYTHONPATH": str(ROOT)}
    data = tmp_path / "data"

    ran = plangate_in(data, "run", "a big write", "--yes", "--playbook", str(playbook), **tools)
    goal_id = re.search(r"^goal (\w+)", ran.stdout, re.MULTILINE)
    status = plangate_in(data, "status", goal_id[1] if goal_id else "?")

    assert ran.returncode == 0, ran.stderr
    [step] = [line for line in ran.stdout.splitlines() if "huge_write  " in line]
    assert "succeeded" in step
    assert "null" not in step
    assert f"returned {MAX_OUTPUT_BYTES + 3} bytes" in step
    assert "the write took effect, its output was not kept" in step
    assert status.returncode == 0, status.stderr
    assert "-> null" not in status.stdout
    assert "the write took effect, its output was not kept" in status.stdout


def test_a_tool_error_echoing_a_megabyte_is_kept_short_and_redacted(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a read whose error quotes a secret and a megabyte a server sent back,
    When a goal runs it,
    Then the stored error is cut to its bound, says how much was left out, and hides the secret.
    """
    register_secret(SECRET)
    goal, steps = _run(settings, tmp_path, "echo it")
    error = steps["e"].error or ""

    assert goal.status == "failed"
    assert SECRET not in error
    assert REDACTED in error
    assert len(error) < MAX_ERROR_CHARS + 100
    assert "more characters not kept" in error


def _preview(step_id: str, output: Any, args: dict[str, Any] | None = None) -> StepPreview:
    return StepPreview(
        step_id=step_id, tool="t", effect="read", status="ran", output=output, args=args or {}
    )


def test_a_preview_over_its_budget_leaves_out_the_largest_outputs_first_and_says_so() -> None:
    """Given a preview of three reads whose outputs, each within the limit, exceed the budget,
    When it is bounded,
    Then the largest outputs are left out until it fits, each with a note; the small one stays.
    """
    big = "b" * (PREVIEW_BUDGET_BYTES // 2 + 10)
    steps = [_preview("a", big), _preview("b", 7), _preview("c", big)]

    bounded = within_budget(steps)

    assert sum(json_size(s.output) + json_size(s.args) for s in bounded) <= PREVIEW_BUDGET_BYTES
    assert [s.step_id for s in bounded] == ["a", "b", "c"]
    assert bounded[1].output == 7
    left_out = [s for s in bounded if s.output is None]
    assert len(left_out) == 1
    assert "output not shown" in (left_out[0].note or "")


def test_a_preview_within_its_budget_is_unchanged() -> None:
    steps = [_preview("a", "small", {"x": 1}), _preview("b", [1, 2, 3])]

    assert within_budget(steps) == steps


def test_a_preview_weighs_arguments_and_preview_text_with_outputs_largest_first() -> None:
    """Given a read with a tiny output, a write whose argument is large, and writes whose
    preview texts together pass the budget,
    When it is bounded,
    Then the largest parts go first whatever they are, the tiny output stays, and the whole
    fits the budget (preview texts were not counted, and outputs all went before any argument).
    """
    big_text = "p" * (PREVIEW_BUDGET_BYTES // 3)
    steps = [
        _preview("tiny", 1),
        StepPreview(
            step_id="arg",
            tool="t",
            effect="write",
            status="previewed",
            args={"body": "a" * (PREVIEW_BUDGET_BYTES // 2)},
        ),
        *(
            StepPreview(
                step_id=f"w{n}", tool="t", effect="write", status="previewed", preview=big_text
            )
            for n in range(3)
        ),
    ]

    bounded = within_budget(steps)

    assert sum(json_size(s.model_dump(mode="json")) for s in bounded) <= PREVIEW_BUDGET_BYTES
    by_id = {s.step_id: s for s in bounded}
    assert by_id["tiny"].output == 1
    assert by_id["arg"].args == {}
    assert "args not shown" in (by_id["arg"].note or "")
    assert any("preview not shown" in (by_id[f"w{n}"].note or "") for n in range(3))


def test_a_long_error_is_cut_with_a_count_that_is_never_negative() -> None:
    register_secret("abcdef-long-enough")
    kept = kept_error("abcdef-long-enough " * 200, limit=100)

    assert kept.startswith(REDACTED)
    count = int(kept.rsplit("(", 1)[1].split()[0])
    assert count > 0


def test_a_step_reading_a_write_output_that_was_not_kept_fails_saying_so(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a write whose output was too large to keep, a step whose argument reads it, and
    one that only runs after it,
    When the goal runs,
    Then the reader fails naming the write (read as null it would have run with a made-up
    argument), the other runs, and the write is not run again.
    """
    goal, steps = _run(settings, tmp_path, "feed on a huge answer")

    assert goal.status == "failed"
    assert steps["w"].status == "succeeded"
    assert steps["echo"].status == "failed"
    assert "reads the output of step 'w', which was too large to keep" in (
        steps["echo"].error or ""
    )
    assert steps["s"].output == 3


@tool(effect="read")
def echo_secret() -> dict[str, Any]:
    """Answer quoting a secret, as a server echoing the token it was sent would."""
    return {"headers": [f"Authorization: Bearer {SECRET}"], SECRET: "as a key", "count": 2}


def test_a_secret_a_tool_quotes_in_its_output_is_redacted_before_it_is_kept(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a read whose output quotes a registered secret (in a value and as a key),
    When a goal runs it,
    Then the stored output, which reviewers, observers and later steps read, has `[redacted]`,
    and the rest of the output is as the tool returned it.
    """
    register_secret(SECRET)
    playbook = write_yaml(
        tmp_path / "playbook.yaml",
        {
            "playbooks": [
                {"name": "s", "pattern": "quote", "steps": [{"id": "q", "tool": "echo_secret"}]}
            ]
        },
    )
    policy = write_yaml(tmp_path / "policy.yaml", APPROVE_ALL)
    registry = ToolRegistry([echo_secret])
    with running_pipeline(
        settings, playbook_file=playbook, policy_file=policy, registry=registry
    ) as pipeline:
        goal = pipeline.wait_for(pipeline.submit("quote it").goal_id, timeout=10)
        output = _steps(pipeline, goal.id)["q"].output

    assert goal.status == "completed"
    assert output == {
        "headers": [f"Authorization: Bearer {REDACTED}"],
        REDACTED: "as a key",
        "count": 2,
    }


@tool(effect="read")
def lone_surrogate() -> str:
    """Answer with text no store holds: half of a UTF-16 pair."""
    return "x\ud800y"


def test_a_read_answering_a_lone_surrogate_fails_saying_so(
    settings: Settings, tmp_path: Path
) -> None:
    """Measuring the output raised: the handler failed on every try, the goal stayed running,
    and each resend of its approval became one more dead letter."""
    policy = write_yaml(tmp_path / "policy.yaml", APPROVE_ALL)
    playbook = write_yaml(
        tmp_path / "playbook.yaml",
        {
            "playbooks": [
                {"name": "s", "pattern": "odd", "steps": [{"id": "s", "tool": "lone_surrogate"}]}
            ]
        },
    )
    with running_pipeline(
        settings,
        playbook_file=playbook,
        policy_file=policy,
        registry=ToolRegistry([lone_surrogate]),
    ) as pipeline:
        goal = pipeline.wait_for(pipeline.submit("an odd read").goal_id, timeout=10)
        dead = pipeline.bus.dead_letters()

    assert goal.status == "failed"
    assert "not Unicode (a lone surrogate)" in (goal.status_reason or "")
    assert dead == []
