"""Cancelling a goal: nothing more of it starts; who and why are audited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from approval_gate.expiry import expire_held
from plangate.cancellation import cancel_goal
from plangate.client import Client
from plangate.config import Settings
from plangate.errors import Conflict, Forbidden
from plangate.refusals import COMMENT_KEPT, RECORDED_PER_WINDOW
from plangate.reviewers import Reviewers, add_reviewer
from plangate.server import create_app
from plangate.store.goals import get_goal, store_goal
from plangate.tools import ToolRegistry, tool
from schemas import GoalSubmitted, utcnow
from tests.conftest import SEED_GOAL
from tests.fleet import serving_app
from tests.support import (
    HELD,
    audit_entries,
    eventually,
    only_plan,
    plangate_in,
    plans_of,
    running_pipeline,
    step_runs,
    write_playbook,
    write_yaml,
)

REPO = str(Path(__file__).resolve().parents[1])
APPROVE_ALL = {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "test"}]}


def test_a_running_goal_cancelled_starts_no_further_step(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a running goal whose first step is slow and whose second step waits on it,
    When an operator cancels the goal while the first step runs,
    Then the first step finishes, the second never starts, and the goal is `cancelled`, with
    who and why in its audit log.
    """
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    @tool(effect="read", idempotent=True)
    def slow_count() -> int:
        """Count slowly."""
        calls.append("slow")
        started.set()
        release.wait(10)
        return 3

    @tool(effect="write", idempotent=True)
    def announce(n: int) -> None:
        """Announce the count."""
        calls.append("announce")

    playbook = write_playbook(
        tmp_path,
        "census",
        [
            {"id": "count", "tool": "slow_count"},
            {"id": "tell", "tool": "announce", "args": {"n": "${count}"}},
        ],
    )
    policy = write_yaml(tmp_path / "policy.yaml", APPROVE_ALL)
    registry = ToolRegistry([slow_count, announce])
    with running_pipeline(
        settings, playbook_file=playbook, policy_file=policy, registry=registry
    ) as pipeline:
        goal_id = pipeline.submit("take the census").goal_id
        assert started.wait(10)

        cancel_goal(pipeline.store, goal_id, "ops-oncall", "wrong census")
        release.set()

        plan = only_plan(pipeline.store, goal_id)
        eventually(lambda: step_runs(pipeline.store, plan.plan_id).get("count") == "succeeded")
        goal = pipeline.wait_for(goal_id, {"cancelled"}, timeout=5)
        entries = audit_entries(pipeline.store, goal_id)
    assert calls == ["slow"]
    assert goal.status_reason == "cancelled by ops-oncall: wrong census"
    cancelled = [e for e in entries if e.kind == "goal.cancelled"]
    assert [(e.actor, e.data["reason"]) for e in cancelled] == [
        ("ops-oncall", "cancelled by ops-oncall: wrong census")
    ]


def test_the_cli_cancels_a_held_goal_as_the_reviewer_its_token_names(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed goal held, and a reviewer token,
    When `plangate goals cancel GOAL_ID --reason ...` runs against the store,
    Then the goal is `cancelled` by that reviewer; cancelling it again exits 1 saying it ended.
    """
    with running_pipeline(settings) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "OTEL_"))}
    env |= {
        "PLANGATE_DATA_DIR": str(settings.data_dir),
        "PLANGATE_REVIEWERS_FILE": str(tmp_path / "reviewers.yaml"),
        "PYTHONPATH": REPO,
    }

    def plangate(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plangate", *args],
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    token = plangate("reviewers", "add", "carol").stdout.strip().splitlines()[-1]

    first = plangate(
        "goals", "cancel", goal_id, "--reason", "not today", PLANGATE_REVIEWER_TOKEN=token
    )
    again = plangate("goals", "cancel", goal_id, PLANGATE_REVIEWER_TOKEN=token)
    untokened = plangate("goals", "cancel", goal_id)

    assert first.returncode == 0, first.stderr
    assert f"goal {goal_id}: cancelled — cancelled by carol: not today" in first.stdout
    assert again.returncode == 2
    assert "it has ended, nothing to cancel" in again.stderr
    assert untokened.returncode == 2
    assert "PLANGATE_REVIEWER_TOKEN" in untokened.stderr


HELD_FOR_FINANCE = {
    "rules": [
        {
            "name": "writes-need-finance",
            "match": "plan.steps.exists(s, s.effect == 'write')",
            "action": "hold",
            "reason": "it writes",
            "requires_role": "finance",
        },
        {"name": "reads", "match": "true", "action": "approve", "reason": "reads only"},
    ]
}


def test_cancelling_a_goal_held_for_a_role_needs_that_role(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed goal held for `finance`,
    When carol (no role), refused a reject, cancels the goal instead,
    Then she is refused too (Forbidden, naming the role) and the goal stays held; someone
    with the role cancels it.
    """
    policy = write_yaml(tmp_path / "policy.yaml", HELD_FOR_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)

        with pytest.raises(Forbidden, match="requires the role 'finance' to decide goal"):
            cancel_goal(pipeline.store, goal_id, "carol", "carol cancels instead")
        assert pipeline.wait_for(goal_id, HELD, timeout=5).status == "held"

        cancel_goal(pipeline.store, goal_id, "alice", "not this week", frozenset({"finance"}))
        assert pipeline.wait_for(goal_id, timeout=5).status == "cancelled"


def test_a_cancel_s_audit_entry_names_the_plan_the_state_the_words_and_roles_apart(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed goal held for `finance`,
    When alice (with `finance`) cancels it saying "not this week",
    Then its `goal.cancelled` entry records the plan it ended, the state it was in, her own
    words apart from the move's reason, and her roles, as a rejection's entry does: it had the
    reason alone ("cancelled by alice: not this week"), and an auditor could not tell which
    payment plan was stopped, nor from where.
    """
    policy = write_yaml(tmp_path / "policy.yaml", HELD_FOR_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan_id = only_plan(pipeline.store, goal_id).plan_id

        cancel_goal(pipeline.store, goal_id, "alice", "not this week", frozenset({"finance"}))

        [entry] = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "goal.cancelled"]
    assert entry.actor == "alice"
    assert entry.data == {
        "plan_id": plan_id,
        "from_state": "held",
        "comment": "not this week",
        "roles": ["finance"],
        "reason": "cancelled by alice: not this week",
    }


def test_a_goal_published_under_the_start_of_a_real_one_s_id_takes_none_of_its_commands(
    settings: Settings,
) -> None:
    """Given a held goal, and a decoy published with the first 8 characters of its id as its
    own whole id,
    When an operator cancels by the short id that `plangate run` and `goals list` print,
    Then the command is refused as ambiguous, both goals stay as they were, and the real goal's
    whole id cancels the real goal.
    """
    with running_pipeline(settings) as pipeline:
        real = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(real, HELD, timeout=5)
        short = real[:8]
        with pipeline.store.session() as session:
            store_goal(session, GoalSubmitted(goal_id=short, text="a decoy"), {})

        with pytest.raises(Conflict, match="give the other's whole id"):
            cancel_goal(pipeline.store, short, "alice", "wrong one?")

        assert pipeline.wait_for(real, HELD, timeout=1).status == "held"
        cancel_goal(pipeline.store, real, "alice", "the real one")
        assert pipeline.wait_for(real, timeout=5).status == "cancelled"


def test_the_steps_of_a_goal_that_ended_before_running_are_not_run_not_pending(
    settings: Settings,
) -> None:
    """Given the seed plan held, When a reviewer rejects it (or it is cancelled),
    Then its status lists each step as skipped, not run because the goal ended: `pending`
    said they might yet run. Its `steps` say the same: they were {} beside those results."""
    with running_pipeline(settings) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        pipeline.reject(only_plan(pipeline.store, goal_id).plan_id, "alice", "not today")
        pipeline.wait_for(goal_id, {"rejected"}, timeout=5)

        with Client(settings) as client:
            status = client.status(goal_id)

    assert [(r.step_id, r.status, r.error) for r in status.results] == [
        (step, "skipped", "not run: the goal is rejected") for step in ("count", "sla", "notify")
    ]
    assert status.steps == {"count": "skipped", "sla": "skipped", "notify": "skipped"}


def test_a_whole_id_the_stages_pass_along_is_never_taken_for_a_short_one(
    settings: Settings,
) -> None:
    """Given a goal published as `20240611` and a made id that starts with it,
    Then the stages' lookups by that whole id find that goal (they were refused as ambiguous,
    and its replanning stopped), while a person typing it is asked for the whole id; and rows
    that merely share the start never crowd the made id out of a short id's lookup."""
    made = "20240611" + "0" * 24
    crowd = [f"abcdef12-{n}" for n in range(5)]
    with running_pipeline(settings) as pipeline:
        with pipeline.store.session() as session:
            for goal_id in ("20240611", made, "abcdef12", *crowd, "abcdef12" + "f" * 24):
                store_goal(session, GoalSubmitted(goal_id=goal_id, text="x"), {})
        with pipeline.store.reading() as session:
            assert get_goal(session, "20240611").id == "20240611"
            with pytest.raises(Conflict, match="give the other's whole id"):
                get_goal(session, "20240611", typed=True)
            with pytest.raises(Conflict, match="give the other's whole id"):
                get_goal(session, "abcdef12", typed=True)
            assert get_goal(session, "abcdef", typed=True).id == "abcdef12" + "f" * 24


def post_as(base_url: str, path: str, token: str, body: dict[str, Any]) -> int:
    """POST `body` as JSON with a reviewer's token; return the HTTP status."""
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_a_refused_cancel_or_retry_is_an_audit_entry_as_a_refused_approval_is(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed goal held for `finance`, and carol, a reviewer without the role,
    When carol approves it, cancels it over the API, retries it, and cancels it with
    `plangate goals cancel`,
    Then each is refused (403, 403, 409, exit 2) and each refusal is a `review.refused` entry
    by carol naming the action, the held plan and why: the log kept her refused approval, but
    none of her refused cancels, though the docs say every refusal is an entry. The goal stays
    held.
    """
    policy = write_yaml(tmp_path / "policy.yaml", HELD_FOR_FINANCE)
    team = tmp_path / "reviewers.yaml"
    token = add_reviewer(team, "carol", [])
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        with pytest.raises(Forbidden):
            pipeline.approve(plan_id, "carol")
        served = settings.model_copy(update={"reviewers_file": team})
        reviewers = Reviewers.from_file(team)
        with (
            Client(served) as client,
            serving_app(create_app(served, client=client, reviewers=reviewers)) as url,
        ):
            reason = {"reason": "duplicate request"}
            cancelled = post_as(url, f"/api/v1/goals/{goal_id}/cancel", token, reason)
            retried = post_as(url, f"/api/v1/goals/{goal_id}/retry", token, reason)
        cli = plangate_in(
            settings.data_dir,
            *("goals", "cancel", goal_id[:8], "--reason", "duplicate request"),
            PLANGATE_REVIEWERS_FILE=str(team),
            PLANGATE_REVIEWER_TOKEN=token,
        )
        still = pipeline.wait_for(goal_id, HELD, timeout=5).status
        refused = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "review.refused"]

    assert (cancelled, retried, cli.returncode, still) == (403, 409, 2, "held")
    assert "requires the role 'finance'" in cli.stderr
    assert [(e.actor, e.data["action"], e.data["plan_id"]) for e in refused] == [
        ("carol", "approve", plan_id),
        ("carol", "cancel", plan_id),
        ("carol", "retry", plan_id),
        ("carol", "cancel", plan_id),
    ]
    reasons = [e.data["reason"] for e in refused]
    assert "cancelling it decides it; carol does not have it" in reasons[1]
    assert reasons[1] == reasons[3]
    assert "only a goal that is" in reasons[2]
    # What carol said she did it for, as a decision that counts keeps it.
    assert [e.data.get("comment") for e in refused[1:]] == ["duplicate request"] * 3


def test_one_person_s_refusals_are_recorded_up_to_a_bound_then_counted_in_the_log(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the seed goal held for `finance`,
    When erin, without the role, has 40 cancels refused, each saying 2,000 characters,
    Then each is refused, the first 30 are `review.refused` entries keeping at most 500
    characters of what she said, and the rest are one warning in the log, not entries: a
    reviewer wrote 50 MB of refusals in 13 s, and the goal's page showed only those.
    """
    policy = write_yaml(tmp_path / "policy.yaml", HELD_FOR_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        with Client(settings) as client, caplog.at_level("WARNING", logger="plangate.refusals"):
            for _ in range(40):
                with pytest.raises(Forbidden):
                    client.cancel(goal_id, "erin", "x" * 2000)
        refused = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "review.refused"]

    assert len(refused) == RECORDED_PER_WINDOW
    assert {len(e.data["comment"]) for e in refused} == {COMMENT_KEPT + 1}  # and its "…"
    [said] = [r.getMessage() for r in caplog.records if r.name == "plangate.refusals"]
    assert said.startswith("erin had 30 decisions refused in 300 s")
    assert "1 more refused and not written to the audit log" in said


def test_a_refused_approval_keeps_what_its_reviewer_said(
    settings: Settings, tmp_path: Path
) -> None:
    """A refused approve or reject kept no comment, where a refused cancel did."""
    policy = write_yaml(tmp_path / "policy.yaml", HELD_FOR_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        with pytest.raises(Forbidden):
            pipeline.review.approve(plan_id, "dave", comment="looks fine to me")
        with pytest.raises(Forbidden):
            pipeline.review.reject(plan_id, "dave", "too costly")
        refused = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "review.refused"]

    assert [(e.data["action"], e.data["comment"]) for e in refused] == [
        ("approve", "looks fine to me"),
        ("reject", "too costly"),
    ]


def test_retrying_a_goal_whose_plan_lapsed_in_a_hold_for_a_role_needs_that_role(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed goal held for `finance`, left to expire,
    When carol, without the role, retries it, and then alice, with it,
    Then carol is refused (audited), the goal staying expired, and alice's retry sends it
    back: a reviewer without the role revived the plans finance let lapse, again and again.
    """
    policy = write_yaml(tmp_path / "policy.yaml", HELD_FOR_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        expire_held(pipeline.store, utcnow() + timedelta(days=400))
        assert pipeline.wait_for(goal_id, {"expired"}, timeout=5).status == "expired"
        # The in-memory broker is shared within this process: the client publishes to it.
        with Client(settings.model_copy(update={"broker_url": "memory://"})) as client:
            with pytest.raises(Forbidden, match="retrying it brings it back for them"):
                client.retry(goal_id, "carol", "try again")
            assert client.status(goal_id).status == "expired"
            client.retry(goal_id, "alice", "we are ready now", frozenset({"finance"}))
        pipeline.wait_for(goal_id, HELD, timeout=5)
        assert len(plans_of(pipeline.store, goal_id)) == 2
        refused = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "review.refused"]

    assert [(e.actor, e.data["action"]) for e in refused] == [("carol", "retry")]
