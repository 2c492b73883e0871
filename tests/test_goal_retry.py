"""`plangate goals retry`: a failed goal goes back through the planner and the gate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plangate.client import Client
from plangate.config import Settings
from plangate.errors import ToolError
from plangate.goal_retry import retry_goal
from plangate.goal_status import GoalStatus, read_status
from plangate.relay import deliver
from plangate.reviewers import add_reviewer
from plangate.server import create_app
from plangate.step_calls import idempotency_key
from plangate.store import AuditRow, DecisionRow, open_store
from plangate.tools import ToolContext, ToolRegistry, tool
from schemas import Step
from tests.fleet import FAST_SWEEPS, Fleet
from tests.support import (
    eventually,
    plangate_in,
    plans_of,
    running_pipeline,
    write_playbook,
    write_yaml,
)
from tests.test_distributed import APPROVE_ALL

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    playbook = write_playbook(
        tmp_path,
        "flaky",
        [
            {"id": "first", "tool": "quick_read"},
            {"id": "second", "tool": "flaky_read", "args": {"number": "${first}"}},
        ],
    )
    fleet = Fleet(
        redis_url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={
            **FAST_SWEEPS,
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(playbook),
            "PLANGATE_TOOLS": "tests.takeover_tools",
            "PYTHONPATH": str(ROOT),
            "TAKEOVER_MARKER": str(tmp_path / "marker"),
            "PLANGATE_REVIEWERS_FILE": str(tmp_path / "reviewers.yaml"),
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    fleet.start_all()
    try:
        yield fleet
    finally:
        fleet.stop_all()


def count(fleet: Fleet, query: object) -> int:
    store = open_store(fleet.database_url, upgrade=False)
    try:
        with store.session() as session:
            return int(session.execute(query).scalar_one())  # type: ignore[call-overload]
    finally:
        store.close()


def test_a_failed_goal_retried_is_a_new_revision_the_gate_decides_again(fleet: Fleet) -> None:
    """Given a goal whose second read failed (the upstream was down),
    When an operator retries it with `plangate goals retry`,
    Then the planner makes revision 2, the gate decides it (a second decision), it runs and
    completes; the retry is audited with who and why, and `status` says it (only the audit log
    did); retrying the completed goal is refused.
    """
    token = fleet.plangate("reviewers", "add", "olga").stdout.strip().splitlines()[-1]
    with Client(fleet.settings()) as client:
        goal_id = client.submit("flaky please").goal_id
        failed = client.goal(goal_id).wait(timeout=30)
        assert failed.status == "failed", (failed, fleet.logs())
        assert failed.revision == 1

        retried = fleet.plangate(
            "goals", "retry", goal_id, "--reason", "upstream is back", PLANGATE_REVIEWER_TOKEN=token
        )
        assert retried.returncode == 0, retried.stderr
        final = client.goal(goal_id).wait(timeout=30)

    assert final.status == "completed", (final, fleet.logs())
    assert final.revision == 2
    assert final.outputs["second"] == 2
    decisions = select(func.count()).where(DecisionRow.goal_id == goal_id)
    assert count(fleet, decisions) == 2
    audited = select(func.count()).where(
        AuditRow.goal_id == goal_id, AuditRow.kind == "goal.submitted", AuditRow.actor == "olga"
    )
    assert count(fleet, audited) == 1
    assert final.retried is not None
    retried = final.retried
    assert (retried.by, retried.from_state) == ("olga", "failed")
    assert retried.reason == "upstream is back"
    shown = fleet.plangate("status", goal_id).stdout
    said = f"  retried by olga at {retried.at.isoformat()} (it was failed): upstream is back"
    assert said in shown

    again = fleet.plangate("goals", "retry", goal_id, PLANGATE_REVIEWER_TOKEN=token)
    assert again.returncode == 2
    assert "is completed; only a goal that is" in again.stderr


def test_retry_without_a_deployment_is_refused_and_the_goal_stays_as_it_was(
    tmp_path: Path,
) -> None:
    """Given the embedded default (no broker, no server) and a goal whose planning failed,
    When a reviewer runs `plangate goals retry` on it,
    Then it exits 2 saying it needs a running deployment and how to reach one, and the goal is
    still `plan_failed` (it moved to `submitted` with exit 0, for no planner ever to take up).
    """
    reviewers = tmp_path / "reviewers.yaml"
    token = add_reviewer(reviewers, "alice", [])
    assert plangate_in(tmp_path, "run", "water the plants").returncode == 1
    goal = json.loads(plangate_in(tmp_path, "goals", "list", "--json").stdout.splitlines()[0])
    assert goal["status"] == "plan_failed"

    retried = plangate_in(
        tmp_path, "goals", "retry", goal["goal_id"],
        PLANGATE_REVIEWER_TOKEN=token, PLANGATE_REVIEWERS_FILE=str(reviewers),
    )  # fmt: skip

    assert retried.returncode == 2, retried.stdout + retried.stderr
    assert retried.stderr.startswith("error: retrying a goal needs a running deployment")
    shown = plangate_in(tmp_path, "status", goal["goal_id"], "--json")
    assert json.loads(shown.stdout)["status"] == "plan_failed"


RESERVED: list[str] = []  # the idempotency keys `reserve` was called with


@tool(effect="write", idempotent=True)
def reserve(sku: str, context: ToolContext) -> str:
    """Reserve stock once per idempotency key."""
    RESERVED.append(context.idempotency_key)
    return f"reserved {sku}"


@tool(effect="read", idempotent=True)
def explode(note: str) -> int:
    """Fail, as an upstream that is down does."""
    raise ToolError(f"upstream down ({note})")


def test_a_retried_goal_passes_an_unchanged_write_the_key_it_had(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a goal that reserved stock (an idempotent write) and then failed on a read,
    When it is retried (a new revision, a new plan hash),
    Then the reservation is called with the key it had: keyed by the plan's hash, the retry
    reserved a second time under a new key, which no downstream dedup could catch.
    """
    RESERVED.clear()
    playbook = write_playbook(
        tmp_path,
        "reserve then fail",
        [
            {"id": "r", "tool": "reserve", "args": {"sku": "Q1"}},
            {"id": "e", "tool": "explode", "args": {"note": "${r}"}},
        ],
    )
    with running_pipeline(
        settings,
        registry=ToolRegistry([reserve, explode]),
        playbook_file=playbook,
        policy_file=write_yaml(tmp_path / "policy.yaml", yaml.safe_load(APPROVE_ALL)),
    ) as pipeline:
        goal_id = pipeline.submit("reserve then fail").goal_id
        assert pipeline.wait_for(goal_id).status == "failed"
        deliver(
            pipeline.store, pipeline.bus, [retry_goal(pipeline.store, goal_id, "olga", "again")]
        )
        eventually(lambda: len(RESERVED) == 2, timeout=10, what="the retry's reservation")

    assert RESERVED[0] == RESERVED[1]


def test_status_json_and_the_goals_api_give_the_last_retry_as_fields_alike(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a goal that failed, retried by olga with a reason, and failed again,
    When `plangate status --json` and serve's `GET /api/v1/goals/{id}` are asked for it,
    Then both give `retried` as the same fields (by, at, from_state, reason), where it was one
    sentence a program had to take apart; and `plangate status` still says it in one line.
    """
    step = {"id": "e", "tool": "explode", "args": {"note": "down"}}
    playbook = write_playbook(tmp_path, "fail", [step])
    with running_pipeline(
        settings,
        registry=ToolRegistry([explode]),
        playbook_file=playbook,
        policy_file=write_yaml(tmp_path / "policy.yaml", yaml.safe_load(APPROVE_ALL)),
    ) as pipeline:
        goal_id = pipeline.submit("fail").goal_id
        assert pipeline.wait_for(goal_id).status == "failed"
        retry = retry_goal(pipeline.store, goal_id, "olga", "upstream is back")
        deliver(pipeline.store, pipeline.bus, [retry])
        eventually(lambda: len(plans_of(pipeline.store, goal_id)) == 2, 10, "revision 2")
        assert pipeline.wait_for(goal_id).status == "failed"

    printed = json.loads(plangate_in(settings.data_dir, "status", goal_id, "--json").stdout)
    with TestClient(create_app(settings, intake_token="intake")) as http:
        answer = http.get(f"/api/v1/goals/{goal_id}", headers={"Authorization": "Bearer intake"})
    human = plangate_in(settings.data_dir, "status", goal_id).stdout

    retried = printed["retried"]
    assert {k: v for k, v in retried.items() if k != "at"} == {
        "by": "olga",
        "from_state": "failed",
        "reason": "upstream is back",
    }
    assert answer.json()["retried"] == retried
    assert f"  retried by olga at {retried['at'][:-1]}+00:00 (it was failed): upstream is back" in (
        human
    )


def test_a_goal_retried_from_plan_failed_says_who_retried_it_and_why(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a goal no playbook matches (plan_failed), retried by olga with a reason, and
    failed to plan again,
    When its status is read,
    Then `retried` names olga, plan_failed and her reason: it was read only for a goal with a
    second revision, and such a goal has none (or a first one), so the retry went unsaid.
    """
    with running_pipeline(
        settings,
        registry=ToolRegistry([explode]),
        playbook_file=write_playbook(tmp_path, "fail", [{"id": "e", "tool": "explode"}]),
        policy_file=write_yaml(tmp_path / "policy.yaml", yaml.safe_load(APPROVE_ALL)),
    ) as pipeline:
        goal_id = pipeline.submit("water the plants").goal_id
        assert pipeline.wait_for(goal_id).status == "plan_failed"
        retry = retry_goal(pipeline.store, goal_id, "olga", "the playbook is fixed")
        deliver(pipeline.store, pipeline.bus, [retry])

        def status() -> GoalStatus:
            with pipeline.store.reading() as session:
                return read_status(session, goal_id)

        eventually(
            lambda: status().status == "plan_failed" and status().retried is not None,
            timeout=10,
            what="the retried goal failed to plan again, its retry said",
        )
        retried = status().retried

    assert retried is not None
    assert (retried.by, retried.from_state, retried.reason) == (
        "olga",
        "plan_failed",
        "the playbook is fixed",
    )


def test_the_key_is_the_same_for_a_call_alike_and_another_for_other_values() -> None:
    """A write whose reference filled in another value kept the key of the first call: a
    service honouring keys dropped it, or refused a key reused with other parameters."""
    step = Step(id="w", tool="record", args={"v": "count ${r}"})

    first = idempotency_key("g1", step, {"v": "count 1"})

    assert idempotency_key("g1", step, {"v": "count 1"}) == first
    assert idempotency_key("g1", step, {"v": "count 2"}) != first
    assert idempotency_key("g2", step, {"v": "count 1"}) != first
