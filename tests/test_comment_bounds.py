"""What a person writes beside a decision or a move is bounded however it arrives.

The API took at most 2,000 characters for a comment or a reason; the CLI, which records
through the store directly, took any length (a 100,000-character reason was stored, and
`plangate status` printed it twice), and a goal's metadata was unbounded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plangate.cancellation import cancel_goal
from plangate.config import Settings
from plangate.errors import InputInvalid
from plangate.goal_retry import retry_goal
from plangate.store import GoalRow
from schemas.messages import MAX_COMMENT_CHARS
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan, outer_environment, running_pipeline

TOO_LONG = "r" * (MAX_COMMENT_CHARS + 1)


def test_a_reason_or_comment_past_the_bound_is_refused_and_nothing_moves(
    settings: Settings,
) -> None:
    """Given a held goal,
    When a reviewer rejects it, or an operator cancels it, saying 2,001 characters,
    Then each is refused saying the limit, and the goal stays held; at the limit it is taken.
    """
    with running_pipeline(settings) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id

        with pytest.raises(InputInvalid, match="the comment is 2001 characters long; the limit"):
            pipeline.reject(plan_id, "alice", TOO_LONG)
        with pytest.raises(InputInvalid, match="the reason is 2001 characters long"):
            cancel_goal(pipeline.store, goal_id, "alice", TOO_LONG)
        with pytest.raises(InputInvalid, match="the reason is 2001 characters long"):
            retry_goal(pipeline.store, goal_id, "alice", TOO_LONG)
        with pipeline.store.reading() as session:
            assert session.get_one(GoalRow, goal_id).status == "held"

        cancel_goal(pipeline.store, goal_id, "alice", "r" * MAX_COMMENT_CHARS)
        with pipeline.store.reading() as session:
            assert session.get_one(GoalRow, goal_id).status == "cancelled"


def test_a_comment_holding_a_nul_is_refused_and_nothing_moves(settings: Settings) -> None:
    """Given a held goal,
    When a reviewer approves or rejects it with a note holding a NUL (as a page's form may send),
    Then it is refused saying so, and the goal stays held: kept, the decision held the NUL and
    its audit entry a U+FFFD, two records of one comment that disagreed.
    """
    with running_pipeline(settings) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id

        with pytest.raises(InputInvalid, match="the comment holds a NUL character"):
            pipeline.review.approve(plan_id, "alice", comment="ok\x1b[31m\x00")
        with pytest.raises(InputInvalid, match="the comment holds a NUL character"):
            pipeline.reject(plan_id, "alice", "no\x00")
        with pipeline.store.reading() as session:
            assert session.get_one(GoalRow, goal_id).status == "held"


@pytest.mark.parametrize(
    ("meta", "said"),
    [
        (["big=" + "y" * 2001], "metadata.big"),
        ([f"k{index}=v" for index in range(65)], "metadata"),
        (["k" * 101 + "=v"], "metadata"),
    ],
    ids=["long-value", "many-keys", "long-key"],
)
def test_submit_refuses_metadata_past_its_bounds_in_one_line(
    tmp_path: Path, meta: list[str], said: str
) -> None:
    """Given `plangate submit` with a metadata value over 2,000 characters, 65 labels, or a key
    over 100 characters,
    Then it exits 2 with one line naming the field, and stores no goal.
    """
    env = outer_environment() | {"PLANGATE_DATA_DIR": str(tmp_path / "data")}

    def plangate(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "plangate", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    assert plangate("db", "upgrade").returncode == 0
    options = [word for pair in meta for word in ("--meta", pair)]
    result = plangate("submit", "count tickets", *options)

    assert result.returncode == 2, result.stderr
    assert f"the goal's {said}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert plangate("goals", "list").stderr == "no goals match\n"
