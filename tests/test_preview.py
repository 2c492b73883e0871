"""Dry-run previews of held plans: reads run for real, writes only say what they would do.

The gate asks for one when the rule that held the plan says `preview: true` (the default
policy's `hold-writes` does); an executor makes it with its own tools and stores it beside the
plan, and the review shows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from approval_gate.policy import Policy
from plangate.bus import Envelope
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.errors import PolicyError, ToolError
from plangate.store import PlanPreviewRow
from plangate.tools import ToolRegistry, tool
from schemas import PlanPreviewed, PreviewRequested, StepPreview, plan_hash
from tests.conftest import SEED_GOAL
from tests.support import (
    HELD,
    audit_kinds,
    dead_letters,
    next_message,
    only_plan,
    running_pipeline,
    step_runs,
    write_yaml,
)

CALLS: list[str] = []


@tool(effect="read", idempotent=True)
def count_invoices() -> int:
    """Return how many invoices are unpaid."""
    CALLS.append("count_invoices")
    return 7


@tool(effect="read")
def broken_lookup() -> int:
    """Fail, as a read against a service that is down does."""
    CALLS.append("broken_lookup")
    raise ToolError("the billing service answered 503")


@tool(effect="write", preview=lambda args: f"send {args['count']} reminders")
def send_reminders(count: int) -> str:
    """Send a reminder for each unpaid invoice."""
    CALLS.append("send_reminders")
    return f"sent {count}"


@tool(effect="write")
def archive_batch(batch: str) -> str:
    """Archive a batch of invoices (declares no preview)."""
    CALLS.append("archive_batch")
    return f"archived {batch}"


def _preview_boom(args: Any) -> str:
    raise ValueError("no template")


@tool(effect="write", preview=_preview_boom)
def close_books(note: str) -> str:
    """Close the month's books."""
    CALLS.append("close_books")
    return "closed"


BILLING_TOOLS = [count_invoices, broken_lookup, send_reminders, archive_batch, close_books]
PLAYBOOK = {
    "playbooks": [
        {
            "name": "remind",
            "pattern": "^remind$",
            "summary": "Count unpaid invoices, remind each, archive the batch the reminder names",
            "steps": [
                {"id": "count", "tool": "count_invoices", "args": {}},
                {"id": "remind", "tool": "send_reminders", "args": {"count": "${count}"}},
                {"id": "archive", "tool": "archive_batch", "args": {"batch": "${remind}"}},
                {"id": "archive_march", "tool": "archive_batch", "args": {"batch": "march"}},
                {"id": "close", "tool": "close_books", "args": {"note": "after ${count}"}},
            ],
        },
        {
            "name": "quiet",
            "pattern": "^quiet$",
            "summary": "Remind only when there are more than 100 unpaid invoices",
            "steps": [
                {"id": "count", "tool": "count_invoices", "args": {}},
                {
                    "id": "remind",
                    "tool": "send_reminders",
                    "args": {"count": "${count}"},
                    "when": "steps.count.output > 100",
                },
            ],
        },
        {
            "name": "broken",
            "pattern": "^broken$",
            "summary": "A read that fails, then a write that needs it",
            "steps": [
                {"id": "look", "tool": "broken_lookup", "args": {}},
                {"id": "remind", "tool": "send_reminders", "args": {"count": "${look}"}},
            ],
        },
    ]
}


def policy(preview: bool) -> dict[str, Any]:
    hold: dict[str, Any] = {
        "name": "hold-writes",
        "match": 'plan.steps.exists(s, s.effect == "write")',
        "action": "hold",
        "reason": "a person decides writes",
    }
    if preview:
        hold["preview"] = True
    return {"mode": "enforce", "rules": [hold]}


@pytest.fixture
def billing(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline with the billing tools, a playbook for them, and a policy that previews holds."""
    CALLS.clear()
    with running_pipeline(
        settings,
        registry=ToolRegistry(BILLING_TOOLS),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", PLAYBOOK),
        policy_file=write_yaml(tmp_path / "policy.yaml", policy(preview=True)),
    ) as pipeline:
        yield pipeline


def previewed(pipeline: Pipeline, goal: str) -> tuple[str, dict[str, StepPreview]]:
    """Submit `goal`, wait for its hold's dry run, and return the goal id and steps by id."""
    with pipeline.bus.observe() as observer:
        goal_id = pipeline.submit(goal).goal_id
        next_message(observer, "plan.held", goal_id)
        message = next_message(observer, "plan.previewed", goal_id)
    assert isinstance(message, PlanPreviewed)
    return goal_id, {step.step_id: step for step in message.steps}


def test_the_seed_plans_preview_shows_real_reads_and_what_the_page_would_say(
    pipeline: Pipeline,
) -> None:
    """Given the seed goal held by the default policy (`hold-writes` asks for a preview),
    When the executor has made the dry run,
    Then the review shows the reads' real outputs (128, 100) and the page the write would
    send, its references resolved; no notification was sent and no step ran as execution.
    """
    goal_id, steps = previewed(pipeline, SEED_GOAL)

    assert (steps["count"].status, steps["count"].output) == ("ran", 128)
    assert (steps["sla"].status, steps["sla"].output) == ("ran", 100)
    notify = steps["notify"]
    assert (notify.status, notify.effect) == ("previewed", "write")
    assert notify.args == {"message": "Ticket count 128 exceeded SLA 100"}
    assert notify.preview == "page the on-call engineer: 'Ticket count 128 exceeded SLA 100'"
    held = pipeline.review.get(only_plan(pipeline.store, goal_id).plan_id)
    assert held.preview_state == "ready"
    assert held.preview == list(steps.values())
    assert read_notifications() == []
    assert step_runs(pipeline.store, held.plan.plan_id) == {}
    assert pipeline.wait_for(goal_id, HELD, timeout=1).status == "held"
    assert audit_kinds(pipeline.store, goal_id)[-2:] == ["goal.held", "plan.previewed"]


def test_approving_after_the_preview_runs_the_plan_and_notifies_once(pipeline: Pipeline) -> None:
    """Given the seed plan previewed,
    When a reviewer approves it,
    Then it runs for real and the on-call engineer is paged exactly once.
    """
    goal_id, _ = previewed(pipeline, SEED_GOAL)

    pipeline.approve(only_plan(pipeline.store, goal_id).plan_id, "alice")

    assert pipeline.wait_for(goal_id, timeout=5).status == "completed"
    assert [n["message"] for n in read_notifications()] == ["Ticket count 128 exceeded SLA 100"]


def test_no_write_tool_is_called_by_a_preview(billing: Pipeline) -> None:
    """Given a plan of a read, two writes and a write whose preview raises,
    When it is previewed,
    Then only the read was called; a write shows its preview with references resolved, the
    write that needs another write's output is pending, the one without a preview says so and
    shows its arguments, and a preview that raises is a note, not a failure.
    """
    _, steps = previewed(billing, "remind")

    assert CALLS == ["count_invoices"]
    assert (steps["count"].status, steps["count"].output) == ("ran", 7)
    assert (steps["remind"].status, steps["remind"].preview) == ("previewed", "send 7 reminders")
    assert steps["archive"].status == "pending"
    assert steps["archive"].note == (
        "needs the output of write step 'remind', which a preview does not run"
    )
    assert (steps["archive_march"].status, steps["archive_march"].args) == (
        "previewed",
        {"batch": "march"},
    )
    assert steps["archive_march"].note == (
        "this tool declares no preview; it would be called with the arguments shown"
    )
    assert steps["close"].status == "previewed"
    assert steps["close"].args == {"note": "after 7"}
    assert steps["close"].preview is None
    assert steps["close"].note == "the tool's preview failed: ValueError: no template"


def test_a_false_condition_shows_the_write_would_be_skipped(billing: Pipeline) -> None:
    """Given a write whose `when` depends only on a read, and the read making it false,
    When it is previewed,
    Then the write is `skipped` with the condition, so the reviewer sees it would not run.
    """
    _, steps = previewed(billing, "quiet")

    assert steps["remind"].status == "skipped"
    assert steps["remind"].note == "`when` is false: steps.count.output > 100"
    assert CALLS == ["count_invoices"]


def test_a_failing_read_is_shown_as_failed_and_what_needs_it_is_skipped(billing: Pipeline) -> None:
    _, steps = previewed(billing, "broken")

    assert steps["look"].status == "failed"
    assert "the billing service answered 503" in (steps["look"].note or "")
    assert steps["remind"].status == "skipped"
    assert CALLS == ["broken_lookup"]


def test_a_forged_request_for_a_plan_no_rule_asked_to_preview_runs_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan held by a rule that does not ask for a preview,
    When a preview request for it is put on the broker anyway,
    Then it is dead-lettered, saying no rule asked for one, and no tool is called.
    """
    CALLS.clear()
    with running_pipeline(
        settings,
        registry=ToolRegistry(BILLING_TOOLS),
        playbook_file=write_yaml(tmp_path / "playbook.yaml", PLAYBOOK),
        policy_file=write_yaml(tmp_path / "policy.yaml", policy(preview=False)),
    ) as pipeline:
        goal_id = pipeline.submit("remind").goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)

        request = PreviewRequested(goal_id=goal_id, plan=plan, plan_hash=plan_hash(plan))
        pipeline.bus.publish([Envelope.of(request)])

        [letter] = dead_letters(pipeline)
    assert "no rule asked for a preview of it" in letter.reason
    assert CALLS == []


def test_a_rule_without_preview_asks_for_none(settings: Settings, tmp_path: Path) -> None:
    """Given a policy whose holding rule does not set `preview`,
    When a plan is held,
    Then no preview is asked of an executor, and the review says there is none.
    """
    CALLS.clear()
    with (
        running_pipeline(
            settings,
            registry=ToolRegistry(BILLING_TOOLS),
            playbook_file=write_yaml(tmp_path / "playbook.yaml", PLAYBOOK),
            policy_file=write_yaml(tmp_path / "policy.yaml", policy(preview=False)),
        ) as pipeline,
        pipeline.bus.observe() as observer,
    ):
        goal_id = pipeline.submit("remind").goal_id
        next_message(observer, "plan.held", goal_id)
        held = pipeline.review.get(only_plan(pipeline.store, goal_id).plan_id)
        with pytest.raises(AssertionError):
            next_message(observer, "plan.preview_requested", goal_id, timeout=0.5)
    assert (held.preview_state, held.preview) == ("none", None)
    assert CALLS == []


def test_a_redelivered_request_repeats_the_stored_preview_without_calling_again(
    billing: Pipeline,
) -> None:
    goal_id, steps = previewed(billing, "remind")
    plan = only_plan(billing.store, goal_id)

    with billing.bus.observe() as observer:
        request = PreviewRequested(goal_id=goal_id, plan=plan, plan_hash=plan_hash(plan))
        billing.bus.publish([Envelope.of(request)])
        again = next_message(observer, "plan.previewed", goal_id)

    assert isinstance(again, PlanPreviewed)
    assert {step.step_id: step for step in again.steps} == steps
    assert CALLS == ["count_invoices"]


def test_a_request_for_a_plan_no_longer_held_calls_nothing(billing: Pipeline) -> None:
    """Given a plan a reviewer already approved (and that ran),
    When a preview request for it arrives (late, or forged),
    Then no tool is called and no preview is stored.
    """
    with billing.bus.observe() as observer:
        goal_id = billing.submit("quiet").goal_id
        next_message(observer, "plan.previewed", goal_id)
    plan = only_plan(billing.store, goal_id)
    with billing.store.session() as session:  # as it was when the gate asked for it
        session.get_one(PlanPreviewRow, plan.plan_id).steps = None
    billing.approve(plan.plan_id, "alice")
    assert billing.wait_for(goal_id, timeout=5).status == "completed"
    CALLS.clear()

    with billing.bus.observe() as observer:
        request = PreviewRequested(goal_id=goal_id, plan=plan, plan_hash=plan_hash(plan))
        billing.bus.publish([Envelope.of(request)])
        with pytest.raises(AssertionError):
            next_message(observer, "plan.previewed", goal_id, timeout=0.5)

    assert CALLS == []
    with billing.store.session() as session:
        assert session.get_one(PlanPreviewRow, plan.plan_id).steps is None


def test_a_request_whose_plan_differs_from_the_stored_one_is_dead_lettered(
    billing: Pipeline,
) -> None:
    """Given a held plan,
    When a preview request arrives carrying a changed copy of it,
    Then it is dead-lettered with its reason, and nothing is called.
    """
    goal_id, _ = previewed(billing, "remind")
    plan = only_plan(billing.store, goal_id)
    changed = plan.model_copy(update={"summary": "something else"})
    CALLS.clear()

    request = PreviewRequested(goal_id=goal_id, plan=changed, plan_hash=plan_hash(changed))
    billing.bus.publish([Envelope.of(request)])

    [letter] = dead_letters(billing)
    assert "a preview was asked of a plan not in the store" in letter.reason
    assert CALLS == []


def test_preview_must_be_a_boolean_in_the_policy_file() -> None:
    text = """
rules:
  - name: hold-writes
    match: 'true'
    action: hold
    reason: a person decides
    preview: "yes"
"""
    with pytest.raises(PolicyError) as raised:
        Policy.from_text(text)
    assert "preview" in str(raised.value)
