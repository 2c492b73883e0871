"""Settling a write in doubt as a team does it: the executors, the gate, the planner and
`serve` each a process of its own, the write cut off by a real SIGKILL in the middle of its
call, and the reviewer's settles posted to serve's API over HTTP.

Tested in one process (`tests/test_settle.py`), the stale settle's refusal could not show what
an attacker found across processes: a page left open on the first call, posted again after
the write had run a second time, had it run a third.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import FAST_SWEEPS, Fleet
from tests.support import call, eventually
from tests.test_distributed import APPROVE_ALL, with_chaos_tools

# Five processes, two of them killed mid-call: slow on a busy machine.
pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    """A migrated SQLite store, the chaos tools, a policy that approves every plan."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(policy), **FAST_SWEEPS},
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        yield fleet
    finally:
        fleet.stop_all()


def doomed_executor(fleet: Fleet, name: str) -> Any:
    """Start an executor that SIGKILLs itself once, right after its write's effect."""
    marker = str(fleet.folder / f"fault-{name}")
    return fleet.start("executor", PLANGATE_FAULT="mid_tool", PLANGATE_FAULT_MARKER=marker)


def test_a_stale_settle_posted_to_serve_after_the_write_ran_again_is_refused(
    fleet: Fleet,
) -> None:
    """Given a charge cut off mid-call by a SIGKILL, found unknown by another executor, and
    settled "did not happen" through serve's API with the `unknown_since` alice read there,
    When the charge, run again, is cut off again and found unknown once more, and alice's
    settle is posted again (a tab left open, a retry),
    Then serve answers 409 saying the step was called again since, nothing runs a third time,
    and a settle naming the call now listed resumes the run to completed: two charges in all.
    """
    effects = with_chaos_tools(fleet)
    reviewers = fleet.folder / "reviewers.yaml"
    added = fleet.plangate("reviewers", "add", "alice", "--file", str(reviewers))
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    first = doomed_executor(fleet, "first")
    fleet.start("planner")
    fleet.start("gate")
    url = fleet.ready(fleet.serve_free(PLANGATE_REVIEWERS_FILE=str(reviewers)))
    goal_id = json.loads(fleet.plangate("submit", "charge 5", "--json").stdout)["goal_id"]
    assert first.wait(timeout=30) == -9, fleet.logs()
    second = doomed_executor(fleet, "second")

    def unsettled() -> list[dict[str, Any]]:
        code, listed = call(f"{url}/api/v1/reviews/unsettled", token)
        assert code == 200, listed
        return [step for step in listed if step["goal_id"] == goal_id]

    [checked] = eventually(unsettled, timeout=40, what="the charge found unknown")
    settle_url = f"{url}/api/v1/reviews/{checked['plan_id']}/steps/charge/settle"
    stale = {"happened": False, "unknown_since": checked["since"], "comment": "not at the bank"}
    code, said = call(settle_url, token, stale)
    assert code == 200, said
    assert second.wait(timeout=30) == -9, fleet.logs()  # the charge ran again, cut off again
    fleet.start("executor")
    [now] = eventually(
        lambda: [s for s in unsettled() if s["since"] != checked["since"]],
        timeout=40,
        what="the second call found unknown",
    )

    code, refused = call(settle_url, token, stale)
    assert code == 409, refused
    assert "called again since you looked" in json.dumps(refused)

    code, said = call(settle_url, token, {"happened": True, "unknown_since": now["since"]})
    assert code == 200, said

    def completed() -> dict[str, Any] | None:
        status: dict[str, Any] = json.loads(fleet.plangate("status", goal_id, "--json").stdout)
        return status if status["status"] == "completed" else None

    status = eventually(completed, timeout=40, what="the goal completed")
    assert status["steps"] == {"charge": "succeeded"}
    assert len(effects.read_text().splitlines()) == 2, fleet.logs()
