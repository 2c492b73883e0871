"""Every tool call has a deadline: a hung tool costs its step, never the worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.config import Settings
from plangate.errors import ToolLoadError
from plangate.tools import ToolRegistry, tool
from tests.support import audit_kinds, only_plan, running_pipeline, step_runs, write_yaml

APPROVE_ALL = {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "test"}]}


@pytest.fixture
def never() -> Iterator[threading.Event]:
    """An event nobody sets until the test ends: a call waiting on it hangs."""
    event = threading.Event()
    yield event
    event.set()  # let the abandoned calls' threads end with the test


def playbooks(folder: Path) -> Path:
    return write_yaml(
        folder / "playbook.yaml",
        {
            "playbooks": [
                {
                    "name": "hang-read",
                    "pattern": "hang-read",
                    "steps": [{"id": "r", "tool": "stuck_read"}],
                },
                {
                    "name": "hang-write",
                    "pattern": "hang-write",
                    "steps": [{"id": "w", "tool": "stuck_write"}],
                },
                {"name": "quick", "pattern": "quick", "steps": [{"id": "q", "tool": "quick_read"}]},
            ]
        },
    )


def test_a_hung_read_fails_at_its_deadline_a_hung_write_is_unknown_and_others_go_on(
    settings: Settings, tmp_path: Path, never: threading.Event
) -> None:
    """Given a read and a write tool that hang forever, with a deadline of 0.3 s each,
    When a goal runs each of them, and then a quick goal runs,
    Then the read step fails naming its deadline, the write step is `unknown` (its goal waits
    for a person, never re-run silently), and the quick goal completes: the worker goes on.
    """

    @tool(effect="read", timeout=0.3)
    def stuck_read() -> int:
        """Read something from a server that never answers."""
        never.wait()
        return 1

    @tool(effect="write", timeout=0.3)
    def stuck_write() -> str:
        """Write something to a server that never answers."""
        never.wait()
        return "done"

    @tool(effect="read")
    def quick_read() -> int:
        """Answer at once."""
        return 7

    registry = ToolRegistry([stuck_read, stuck_write, quick_read])
    policy = write_yaml(tmp_path / "policy.yaml", APPROVE_ALL)
    with running_pipeline(
        settings, playbook_file=playbooks(tmp_path), policy_file=policy, registry=registry
    ) as pipeline:
        read_goal = pipeline.submit("hang-read please").goal_id
        write_goal = pipeline.submit("hang-write please").goal_id

        read = pipeline.wait_for(read_goal, timeout=10)
        written = pipeline.wait_for(write_goal, {"needs_attention"}, timeout=10)
        quick = pipeline.wait_for(pipeline.submit("quick please").goal_id, timeout=10)

        assert read.status == "failed"
        assert "did not finish within its 0.3 s deadline" in (read.status_reason or "")
        assert step_runs(pipeline.store, only_plan(pipeline.store, read_goal).plan_id) == {
            "r": "failed"
        }
        assert step_runs(pipeline.store, only_plan(pipeline.store, write_goal).plan_id) == {
            "w": "unknown"
        }
        assert "goal.needs_attention" in audit_kinds(pipeline.store, write_goal)
        assert written.status == "needs_attention"
        assert quick.status == "completed"


def test_a_tool_without_a_timeout_gets_the_default_deadline(
    settings: Settings, tmp_path: Path, never: threading.Event
) -> None:
    """Given PLANGATE_TOOL_TIMEOUT_SECONDS of 0.3 and a read tool that declares no timeout,
    When it hangs,
    Then its step fails at the default deadline.
    """

    @tool(effect="read")
    def stuck_read() -> int:
        """Read something from a server that never answers."""
        never.wait()
        return 1

    registry = ToolRegistry([stuck_read])
    policy = write_yaml(tmp_path / "policy.yaml", APPROVE_ALL)
    with running_pipeline(
        settings,
        playbook_file=playbooks(tmp_path),
        policy_file=policy,
        registry=registry,
        tool_timeout_seconds=0.3,
    ) as pipeline:
        goal = pipeline.wait_for(pipeline.submit("hang-read now").goal_id, timeout=10)

    assert goal.status == "failed"
    assert "0.3 s deadline" in (goal.status_reason or "")


@pytest.mark.parametrize("timeout", [0, float("inf"), float("nan"), "10"], ids=repr)
def test_a_timeout_that_is_no_deadline_is_refused_when_the_tool_is_declared(
    timeout: object,
) -> None:
    """Zero, infinity (it overflowed the executor's clock at the call), NaN and text are
    refused where the tool is declared, in one line."""
    with pytest.raises(ToolLoadError, match="timeout must be a number of seconds above 0"):

        @tool(effect="read", timeout=timeout)  # type: ignore[arg-type]
        def instant() -> int:
            """Never allowed to run."""
            return 0
