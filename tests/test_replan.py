"""Replanning: a rejection (or, if configured, a failed run) makes the next revision, bounded.

The LLM planner takes the reviewer's comment (or the failure) as feedback and drafts revision
n+1, at most PLANGATE_REPLAN_LIMIT times per goal; the playbook planner cannot, so a rejection
stands. The model is the scripted server of tests/openai_stub.py, reached over real HTTP.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from plangate.bus import Envelope
from plangate.config import Settings
from plangate.embedded import Pipeline
from schemas import ExecutionFailed, PlanProposed
from tests.conftest import SEED_GOAL
from tests.openai_stub import OpenAIStub, messages_of, plan_reply, running_stub
from tests.support import (
    HELD,
    audit_kinds,
    dead_letters,
    eventually,
    first_envelope,
    next_message,
    plans_of,
    running_pipeline,
)

READ_STEPS = [{"id": "count", "tool": "ticket_count"}, {"id": "sla", "tool": "sla_threshold"}]
SEED_STEPS = [
    *READ_STEPS,
    {
        "id": "notify",
        "tool": "notify_oncall",
        "args": {"message": "Ticket count ${count} exceeded SLA ${sla}"},
        "when": "steps.count.output > steps.sla.output",
    },
]
COMMENT = "Say how many tickets are over the SLA in the page"


@pytest.fixture
def stub(settings: Settings) -> Iterator[OpenAIStub]:
    with running_stub() as server:
        # As OPENAI_BASE_URL and OPENAI_API_KEY would set them.
        settings.openai_base_url = server.base_url
        settings.openai_api_key = SecretStr("test")
        yield server


@pytest.fixture
def llm(settings: Settings, stub: OpenAIStub) -> Iterator[Pipeline]:
    """The embedded pipeline with the LLM planner and at most one replan per goal."""
    with running_pipeline(settings, planner="openai", replan_limit=1) as pipeline:
        yield pipeline


def held_revision(pipeline: Pipeline, goal_id: str, revision: int) -> str:
    """Wait until the goal's newest revision is `revision` and held; return its plan id."""

    def newest_held() -> str | None:
        rows = plans_of(pipeline.store, goal_id)
        goal = pipeline.wait_for(goal_id, statuses={"held", "rejected", "proposed", "plan_failed"})
        if rows and rows[-1].revision == revision and goal.status == "held":
            return rows[-1].plan_id
        return None

    return eventually(newest_held, what=f"revision {revision} held")


def test_a_rejection_with_a_comment_makes_revision_2_from_that_comment(
    llm: Pipeline, stub: OpenAIStub
) -> None:
    """Given the seed goal's LLM plan held for a person,
    When alice rejects it with a comment,
    Then the planner asks the model again with the plan and the comment, revision 2 is held,
    and once approved it runs.
    """
    better = [*SEED_STEPS[:2], {**SEED_STEPS[2], "args": {"message": "${count} > ${sla}"}}]
    stub.script(plan_reply(SEED_STEPS), plan_reply(better, usage=(300, 40)))
    goal_id = llm.submit(SEED_GOAL).goal_id
    first = held_revision(llm, goal_id, 1)

    llm.reject(first, "alice", COMMENT)

    second = held_revision(llm, goal_id, 2)
    request = stub.requests[1]
    *_, previous, feedback = messages_of(request)
    assert previous["role"] == "assistant"
    assert "Ticket count ${count} exceeded SLA" in previous["content"]
    assert feedback["role"] == "user"
    assert "A reviewer rejected that plan (revision 1)" in feedback["content"]
    assert f'<feedback>\n"{COMMENT}"\n</feedback>' in feedback["content"]
    assert messages_of(request)[0] == messages_of(stub.requests[0])[0]  # same system prompt
    assert "goal.rejected" in audit_kinds(llm.store, goal_id)
    rows = plans_of(llm.store, goal_id)
    assert [(r.revision, r.input_tokens) for r in rows] == [(1, 100), (2, 300)]

    llm.approve(second, "alice")
    assert llm.wait_for(goal_id).status == "completed"


def test_after_the_replan_limit_a_rejection_stands(llm: Pipeline, stub: OpenAIStub) -> None:
    """Given PLANGATE_REPLAN_LIMIT=1,
    When revision 1 and then revision 2 are rejected,
    Then there is no revision 3: the goal stays rejected and the model is not asked again.
    """
    stub.script(plan_reply(SEED_STEPS), plan_reply(SEED_STEPS))
    goal_id = llm.submit(SEED_GOAL).goal_id
    llm.reject(held_revision(llm, goal_id, 1), "alice", COMMENT)
    second = held_revision(llm, goal_id, 2)

    with llm.bus.observe() as observer:
        llm.reject(second, "alice", "still no")
        next_message(observer, "plan.rejected", goal_id)
        # The planner has the rejection too; whatever it does, it must not be a proposal.
        with pytest.raises(AssertionError):
            next_message(observer, "plan.proposed", goal_id, timeout=0.5)

    assert llm.wait_for(goal_id).status == "rejected"
    assert [r.revision for r in plans_of(llm.store, goal_id)] == [1, 2]
    assert len(stub.requests) == 2


def test_a_redelivered_rejection_makes_no_second_revision(llm: Pipeline, stub: OpenAIStub) -> None:
    """Given a rejection already answered by revision 2,
    When the same plan.rejected message is delivered again,
    Then the planner republishes revision 2: no new revision, no new model request.
    """
    stub.script(plan_reply(SEED_STEPS), plan_reply(SEED_STEPS))
    goal_id = llm.submit(SEED_GOAL).goal_id
    llm.reject(held_revision(llm, goal_id, 1), "alice", COMMENT)
    second = held_revision(llm, goal_id, 2)
    rejection = first_envelope(llm.store, "plan.rejected", goal_id)

    with llm.bus.observe() as observer:
        llm.bus.publish([Envelope(rejection.routing_key, rejection.body, rejection.headers)])
        again = next_message(observer, "plan.proposed", goal_id)

    assert isinstance(again, PlanProposed)
    assert again.plan.plan_id == second
    assert [r.revision for r in plans_of(llm.store, goal_id)] == [1, 2]
    assert len(stub.requests) == 2
    assert llm.wait_for(goal_id, HELD).status == "held"


def test_with_the_playbook_planner_a_rejection_stands(pipeline: Pipeline) -> None:
    """Given the playbook planner (it cannot take feedback), a rejected plan stays rejected."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    pipeline.reject(plans_of(pipeline.store, goal_id)[0].plan_id, "alice", COMMENT)

    assert pipeline.wait_for(goal_id).status == "rejected"
    assert len(plans_of(pipeline.store, goal_id)) == 1


def test_a_forged_execution_failure_is_a_dead_letter_saying_why_even_with_replanning_off(
    pipeline: Pipeline,
) -> None:
    """Given the planner with replanning off (the default) and a goal held for review,
    When an execution.failed names a plan the store does not have, and another names the
    held plan under another goal,
    Then each is refused into the dead-letter queue saying why (it was acked in silence, no
    line logged), as the other stages refuse a message naming what the store does not know;
    and the held goal is untouched.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    plan_id = plans_of(pipeline.store, goal_id)[0].plan_id
    forged = [
        ExecutionFailed(goal_id=goal_id, plan_id="no-such-plan", reason="forged"),
        ExecutionFailed(goal_id="someone-else", plan_id=plan_id, reason="forged"),
    ]

    pipeline.bus.publish([Envelope.of(message) for message in forged])

    letters = dead_letters(pipeline, count=2)
    assert sorted(letter.reason for letter in letters) == [
        "execution.failed for goal 'someone-else' names another goal's plan",
        "execution.failed names plan 'no-such-plan', which is not in the store",
    ]
    assert {letter.queue for letter in letters} == {f"{pipeline.settings.namespace}.planner"}
    assert pipeline.wait_for(goal_id, HELD).status == "held"


def test_a_failed_run_is_revised_when_replan_on_failure_is_set(
    settings: Settings, stub: OpenAIStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given PLANGATE_REPLAN_ON_FAILURE and a ticket system that cannot be read,
    When a read-only goal runs and fails,
    Then the planner is told why and makes revision 2, which runs (and fails) in its turn;
    with the limit reached, the goal ends failed.
    """
    monkeypatch.setenv("PLANGATE_DEMO_DATA", str(tmp_path / "missing.json"))
    stub.script(plan_reply(READ_STEPS), plan_reply(READ_STEPS))
    overrides: dict[str, Any] = {"replan_on_failure": True, "replan_limit": 1}
    with (
        running_pipeline(settings, planner="openai", **overrides) as pipeline,
        pipeline.bus.observe() as observer,
    ):
        goal_id = pipeline.submit("how many tickets are open").goal_id
        next_message(observer, "execution.failed", goal_id)
        revised = next_message(observer, "plan.proposed", goal_id)
        next_message(observer, "execution.failed", goal_id)
        with pytest.raises(AssertionError):  # the limit is reached: no revision 3
            next_message(observer, "plan.proposed", goal_id, timeout=0.5)
        goal = pipeline.wait_for(goal_id)

    assert isinstance(revised, PlanProposed)
    assert revised.plan.revision == 2
    feedback = messages_of(stub.requests[1])[-1]["content"]
    assert "was approved and run, but execution failed" in feedback
    assert "cannot read the demo data" in feedback
    assert goal.status == "failed"
    assert len(stub.requests) == 2


def test_replan_on_failure_with_the_playbook_planner_says_it_does_nothing(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given PLANGATE_REPLAN_ON_FAILURE with the playbook planner (it takes no feedback), and a
    ticket system that cannot be read,
    When the planner starts, and two read-only goals run and fail,
    Then it warns at its start that the setting does nothing, says of the first failed run
    (info) that it is not planned again, and of the second only at debug; each goal ends
    failed, with its one revision (it consumed execution.failed and said nothing).
    """
    monkeypatch.setenv("PLANGATE_DEMO_DATA", str(tmp_path / "missing.json"))
    caplog.set_level(logging.DEBUG, logger="planner_worker.replan")
    with running_pipeline(settings, replan_on_failure=True) as pipeline:
        goal_ids = [pipeline.submit("how many tickets are open").goal_id for _ in range(2)]
        said = eventually(
            lambda: [r for r in caplog.records if "not planned again" in r.getMessage()][2:3],
            what="the planner's lines on both failed runs",
        )
        goals = [pipeline.wait_for(goal_id) for goal_id in goal_ids]

    warning, first, second = [r for r in caplog.records if "not planned again" in r.getMessage()]
    assert said == [second]
    assert warning.levelno == logging.WARNING
    assert "PLANGATE_REPLAN_ON_FAILURE is set" in warning.getMessage()
    assert "use the LLM planner (PLANGATE_PLANNER=openai)" in warning.getMessage()
    assert (first.levelno, second.levelno) == (logging.INFO, logging.DEBUG)
    assert "takes no feedback" in first.getMessage()
    assert [g.status for g in goals] == ["failed", "failed"]
    assert [len(plans_of(pipeline.store, g)) for g in goal_ids] == [1, 1]


def test_a_forged_failure_of_a_goal_that_did_not_fail_is_not_said_to_have_failed(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Given PLANGATE_REPLAN_ON_FAILURE with the playbook planner, and a goal held for review,
    When an execution.failed names its real plan (someone with the broker learned its id),
    Then the planner says nothing of a failed run not planned again (it told operators that a
    run had failed which never ran), and the goal stays held.
    """
    caplog.set_level(logging.DEBUG, logger="planner_worker.replan")
    with running_pipeline(settings, replan_on_failure=True) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = plans_of(pipeline.store, goal_id)[0].plan_id
        forged = ExecutionFailed(goal_id=goal_id, plan_id=plan_id, reason="forged")
        # Behind it, one the planner dead-letters: once that is, the first was taken too.
        behind = ExecutionFailed(goal_id=goal_id, plan_id="no-such-plan", reason="forged")
        pipeline.bus.publish([Envelope.of(forged), Envelope.of(behind)])
        dead_letters(pipeline, count=1)
        pipeline.stop()  # the handlers under way end first
        status = pipeline.wait_for(goal_id, HELD).status

    said = [r.getMessage() for r in caplog.records if "not planned again" in r.getMessage()]
    assert [line for line in said if "PLANGATE_REPLAN_ON_FAILURE is set" not in line] == []
    assert status == "held"


def test_plangate_run_shows_the_next_revision_after_a_rejection_and_asks_again(
    stub: OpenAIStub, tmp_path: Path
) -> None:
    """Given `plangate run` with the LLM planner,
    When the person types r, a comment, then a for the revised plan,
    Then the run shows revision 1, says a revision is coming, shows revision 2, runs it and
    exits 0.
    """
    better = [*SEED_STEPS[:2], {**SEED_STEPS[2], "args": {"message": "${count} > ${sla}"}}]
    stub.script(plan_reply(SEED_STEPS), plan_reply(better))
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PLANGATE_", "OTEL_", "XDG_"))
    } | {
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "PLANGATE_DEMO_NOTIFICATIONS": str(tmp_path / "notifications.jsonl"),
        "PLANGATE_PLANNER": "openai",
        "OPENAI_BASE_URL": stub.base_url,
        "OPENAI_API_KEY": "test",
        "PYTHONIOENCODING": "utf-8",
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "plangate", "run", SEED_GOAL],
        input=f"r\n{COMMENT}\na\n",
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "revision 1 · by openai:stub-model · 150 tokens" in out
    assert "The planner is making revision 2 from that feedback." in out
    assert "revision 2 · by openai:stub-model" in out
    assert out.index("revision 1") < out.index("making revision 2") < out.index("revision 2 ·")
    assert "Completed" in out
    assert COMMENT in messages_of(stub.requests[1])[-1]["content"]
