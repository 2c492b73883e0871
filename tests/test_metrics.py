"""Prometheus metrics: every worker's `/metrics` and serve's, read with Prometheus' own parser."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from plangate import metrics
from plangate.bus.envelope import Delivery
from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.metrics import StoreCollector
from plangate.middleware.message_metrics import MessageMetrics
from plangate.server import create_app
from plangate.store import GoalRow, open_store
from schemas import utcnow
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet, serving_app
from tests.servers import free_port, refusing_connections
from tests.support import HELD, eventually, only_plan, running_pipeline, write_yaml
from tests.test_distributed import APPROVE_ALL

pytestmark = pytest.mark.redis

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[tuple[Fleet, dict[str, int]]]:
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    fleet = Fleet(
        redis_url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={**FAST_SWEEPS, "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml")},
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    ports = {stage: free_port() for stage in ("planner", "gate", "executor")}
    for stage, port in ports.items():
        fleet.start(stage, PLANGATE_METRICS_PORT=str(port))
    try:
        yield fleet, ports
    finally:
        fleet.stop_all()


def test_each_worker_and_serve_count_the_seed_goal(fleet: tuple[Fleet, dict[str, int]]) -> None:
    """Given three workers with PLANGATE_METRICS_PORT set and a policy that approves all,
    When the seed goal completes,
    Then each worker's /metrics counts what it handled (the planner one goal.submitted, the gate
    one decision by its rule, the executor three tool calls that succeeded, each timed), every
    scrape shows one completed goal and no held plan, and serve's /metrics shows the same.
    """
    running, ports = fleet
    with Client(running.settings()) as client:
        goal_id = client.submit(SEED_GOAL).goal_id
        assert client.goal(goal_id).wait(timeout=40).status == "completed", running.logs()

        def url(stage: str) -> str:
            return f"http://127.0.0.1:{ports[stage]}/metrics"

        planner, gate, executor = (scrape(url(s)) for s in ("planner", "gate", "executor"))
        handled = {"stage": "planner", "type": "goal.submitted", "outcome": "handled"}
        assert value(planner, "plangate_messages_total", **handled) == 1
        timed = {"stage": "planner", "type": "goal.submitted"}  # every call, a retried one too
        assert value(planner, "plangate_handler_seconds_count", **timed) >= 1
        rule = {"action": "approve", "rule": "approve-everything"}
        assert value(gate, "plangate_decisions_total", **rule) == 1
        calls = {
            labels: n
            for (name, labels), n in executor.items()
            if name == "plangate_tool_calls_total" and n
        }
        assert sorted(calls.values()) == [1, 1, 1], calls
        assert all(dict(labels)["outcome"] == "succeeded" for labels in calls)
        tool_times = [
            n for (name, _), n in executor.items() if name == "plangate_tool_seconds_count"
        ]
        assert sum(tool_times) == 3
        for samples in (planner, gate, executor):
            assert value(samples, "plangate_goals", state="completed") == 1
            assert value(samples, "plangate_held_plans") == 0
            assert ("plangate_outbox_backlog", ()) in samples

        with serving_app(create_app(client.settings, client=client)) as base:
            served = scrape(f"{base}/metrics")
        assert value(served, "plangate_goals", state="completed") == 1


@pytest.mark.postgres
def test_an_idle_workers_alerted_series_are_there_at_zero(
    fleet: tuple[Fleet, dict[str, int]],
) -> None:
    """Given three workers just started, no goal sent,
    Then the planner shows its dead letters of an unknown type, and the executor each of its
    tools' failures, at 0: Prometheus' `increase` misses a series' first sample, so a foreign
    publisher's first junk entry (a series born at 1) paged nobody, and a tool's first failure
    after a restart counted one short of PlangateToolFailing's 5.
    """
    running, ports = fleet

    def consuming(stage: str) -> Samples | None:
        """Return the stage's scrape once its consumer counts messages."""
        try:
            samples = scrape(f"http://127.0.0.1:{ports[stage]}/metrics")
        except OSError:
            return None
        counts = any(name == "plangate_messages_total" for name, _ in samples)
        return samples if counts else None

    planner = eventually(lambda: consuming("planner"), timeout=30, what="the planner consuming")
    executor = eventually(lambda: consuming("executor"), timeout=30, what="the executor consuming")

    junk = {"stage": "planner", "type": "unknown", "outcome": "dead_lettered"}
    assert ("plangate_messages_total", tuple(sorted(junk.items()))) in planner, running.logs()
    for outcome in ("succeeded", "failed", "timed_out"):
        labels = (("outcome", outcome), ("tool", "ticket_count"))
        assert executor.get(("plangate_tool_calls_total", labels)) == 0


def test_a_store_that_does_not_answer_is_a_zero_not_a_gap(postgres_database_url: str) -> None:
    """While PostgreSQL was down, the store's gauges simply went missing from every scrape:
    a dashboard showed a gap, and nothing said the store was down."""
    store = open_store(postgres_database_url)
    collector = StoreCollector(store)
    try:
        up = {f.name: f.samples[0].value for f in collector.collect() if f.samples}
        with refusing_connections(postgres_database_url):
            down = {f.name: f.samples[0].value for f in collector.collect() if f.samples}
    finally:
        store.close()

    assert up["plangate_store_up"] == 1
    assert "plangate_outbox_backlog" in up
    assert down == {"plangate_store_up": 0}


def test_an_edit_is_counted_as_an_edit_not_a_rejection(pipeline: Pipeline) -> None:
    """Given the seed goal held for a person,
    When alice edits its plan,
    Then `plangate_decisions_total` counts an edit by a person and no rejection (the dashboard's
    Decisions panel showed every edit as one: the edit is stored as the old revision's).
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    plan = only_plan(pipeline.store, goal_id)
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in plan.steps]
    edits = {"action": "edit", "rule": "person"}
    rejects = {"action": "reject", "rule": "person"}
    before = [
        REGISTRY.get_sample_value("plangate_decisions_total", c) or 0.0 for c in (edits, rejects)
    ]

    pipeline.edit(plan.plan_id, "alice", steps, summary="checked by alice")

    after = [
        REGISTRY.get_sample_value("plangate_decisions_total", c) or 0.0 for c in (edits, rejects)
    ]
    assert after[0] - before[0] == 1
    assert after[1] == before[1]


def test_a_stages_dead_letter_series_are_there_at_zero_from_its_start() -> None:
    """Prometheus' `increase` misses a series' first sample: a stage's first dead letter of a
    type made its series, at 1, and the PlangateDeadLetters alert never fired for it."""
    MessageMetrics("gate")

    zero = REGISTRY.get_sample_value(
        "plangate_messages_total",
        {"stage": "gate", "type": "plan.proposed", "outcome": "dead_lettered"},
    )
    assert zero is not None


def test_a_reviewers_dry_run_is_not_counted_as_tool_calls(pipeline: Pipeline) -> None:
    """Given the seed goal held with a dry run for the reviewer (the default policy asks one),
    Then its reads are not counted in `plangate_tool_calls_total` until the approved plan runs:
    the dashboard's tool calls counted every preview as a call of the plan.
    """
    counted = {"tool": "ticket_count", "outcome": "succeeded"}
    before = REGISTRY.get_sample_value("plangate_tool_calls_total", counted) or 0.0
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    plan_id = pipeline.review.held()[0].plan.plan_id
    eventually(lambda: pipeline.review.get(plan_id).preview, what="the dry run")

    previewed = REGISTRY.get_sample_value("plangate_tool_calls_total", counted) or 0.0
    pipeline.approve(plan_id, "alice")
    assert pipeline.wait_for(goal_id).status == "completed"
    ran = REGISTRY.get_sample_value("plangate_tool_calls_total", counted) or 0.0

    assert previewed == before
    assert ran == before + 1


def test_each_approval_a_rule_asks_several_is_counted_and_no_series_names_a_person(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed plan held by a rule asking two approvals,
    When alice and then bob approve it,
    Then `plangate_decisions_total{action="approve", rule="person"}` grows by two, and no
    series is labelled with a reviewer's name: serve's /metrics answers anyone who reaches the
    review page's port, and listed every reviewer; the approval that did not release the plan
    was not counted at all.
    """
    rule = {"name": "two", "match": "true", "action": "hold", "reason": "a test", "approvals": 2}
    policy = write_yaml(tmp_path / "policy.yaml", {"rules": [rule]})
    approves = {"action": "approve", "rule": "person"}
    before = REGISTRY.get_sample_value("plangate_decisions_total", approves) or 0.0
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        pipeline.approve(plan.plan_id, "alice")
        pipeline.approve(plan.plan_id, "bob")
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"

    assert REGISTRY.get_sample_value("plangate_decisions_total", approves) == before + 2
    rules = {
        sample.labels["rule"]
        for family in REGISTRY.collect()
        if family.name == "plangate_decisions"
        for sample in family.samples
    }
    assert not rules & {"alice", "bob"}, rules


def test_a_decision_no_rule_made_is_counted_as_the_policy_s_not_a_person_s() -> None:
    """`rule=None` became `person` for every decision: the policy's "no rule matched" holds and
    the gate's denials of invalid plans were counted as people's (dashboards on `policy` and
    `gate` went silent)."""
    labels = {"action": "hold", "rule": "policy"}
    before = REGISTRY.get_sample_value("plangate_decisions_total", labels) or 0.0

    metrics.decided("hold", None, "policy")

    assert REGISTRY.get_sample_value("plangate_decisions_total", labels) == before + 1


def test_a_message_of_a_type_plangate_does_not_know_is_counted_as_unknown() -> None:
    """Given broker entries whose routing keys a publisher chose (`evil.<random>`, LPUSHed
    straight onto a stage's list), When each is dead-lettered, Then they are counted under one
    `unknown` type: each made two series of its own, never dropped (300 entries, 600)."""
    counted = MessageMetrics("planner")
    before = REGISTRY.get_sample_value(
        "plangate_messages_total",
        {"stage": "planner", "type": "unknown", "outcome": "dead_lettered"},
    )
    for number in range(50):
        delivery = Delivery("plangate.planner", f"evil.{number}", {}, 1, False)
        counted.after_settle(delivery, "dead_lettered")

    after = REGISTRY.get_sample_value(
        "plangate_messages_total",
        {"stage": "planner", "type": "unknown", "outcome": "dead_lettered"},
    )
    assert after == (before or 0) + 50
    names = {
        sample.labels.get("type", "")
        for family in REGISTRY.collect()
        for sample in family.samples
        if family.name == "plangate_messages"
    }
    assert not any(name.startswith("evil.") for name in names)


def test_the_oldest_approved_goal_is_aged_for_the_alert_on_goals_no_executor_starts(
    tmp_path: Path,
) -> None:
    """Goals piled up in `approved` while no executor ran (or none trusted the gate's key),
    and no plangate metric said how long: only `up` could catch a process gone, not an
    executor that runs and starts nothing.

    Given two goals approved 12 and 3 minutes ago, one held an hour ago, and one submitted
    20 minutes ago (a model server's slow answers held every planner slot, and nothing said so),
    When the store's gauges are collected,
    Then the oldest approved goal has waited 12 minutes (what PlangateApprovedNotStarting
    reads), the held one an hour, the submitted one 20 minutes (PlangateGoalsNotPlanned);
    with none approved, it is 0.
    """
    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    now = utcnow()
    waited = {
        "a": ("approved", 12),
        "b": ("approved", 3),
        "h": ("held", 60),
        "s": ("submitted", 20),
    }
    try:
        with store.session() as session:
            for goal_id, (status, minutes) in waited.items():
                moved = now - timedelta(minutes=minutes)
                session.add(GoalRow(id=goal_id, text="t", status=status, updated_at=moved))
        aged = {f.name: f.samples[0].value for f in StoreCollector(store).collect() if f.samples}
        with store.session() as session:
            session.execute(update(GoalRow).values(status="completed"))
        none = {f.name: f.samples[0].value for f in StoreCollector(store).collect() if f.samples}
    finally:
        store.close()

    assert 12 * 60 <= aged["plangate_oldest_approved_seconds"] < 13 * 60
    assert 60 * 60 <= aged["plangate_oldest_held_seconds"] < 61 * 60
    assert 20 * 60 <= aged["plangate_oldest_submitted_seconds"] < 21 * 60
    assert none["plangate_oldest_approved_seconds"] == 0
    assert none["plangate_oldest_submitted_seconds"] == 0


def test_a_duration_histogram_tells_apart_calls_up_to_the_longest_deadline() -> None:
    """The duration histograms had the client's default buckets, up to 10 s: the dashboard's
    p95 panels read 10 s for tools that took 45 s (timeout 60 s by default) and handlers that
    took 20 minutes (timeout 29 minutes).

    Given a tool call of 45 s and a handler of 20 minutes,
    When their histograms are read,
    Then each falls in a bucket bounded below the longest deadline, not in +Inf alone, and
    the buckets stay few.
    """
    settings = Settings()
    metrics.tool_called("a_slow_report", "succeeded", 45.0)
    metrics.HANDLER_SECONDS.labels("executor", "a.slow.type").observe(20 * 60.0)

    for name, labels in (
        ("plangate_tool_seconds", {"tool": "a_slow_report"}),
        ("plangate_handler_seconds", {"stage": "executor", "type": "a.slow.type"}),
    ):
        bounds = sorted(
            float(sample.labels["le"])
            for family in REGISTRY.collect()
            for sample in family.samples
            if sample.name == f"{name}_bucket" and {k: sample.labels[k] for k in labels} == labels
        )
        finite = [bound for bound in bounds if bound != float("inf")]
        assert finite[-1] >= settings.handler_timeout_seconds, name
        assert any(45.0 <= bound <= settings.tool_timeout_seconds for bound in finite), name
        assert len(bounds) <= 20, name


def test_a_delayed_retry_waiting_in_the_outbox_is_not_a_backlog_the_broker_left(
    tmp_path: Path,
) -> None:
    """After a crash, delayed retries waiting on purpose counted in plangate_outbox_backlog,
    and PlangateOutboxBacklog ("the broker refuses or does not answer") read non-zero with a
    healthy broker.

    Given an outbox with one message due now, one whose retry time has passed and one whose
    retry is due in ten minutes,
    When the store's gauges are collected,
    Then the backlog counts the two due, and the one waiting is a delayed retry.
    """
    from plangate.bus import Envelope
    from plangate.store import outbox

    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    message = Envelope("goal.submitted", b"{}", {})
    try:
        with store.session() as session:
            outbox.add(session, message)
            outbox.add(session, message, not_before=utcnow() - timedelta(seconds=5))
            outbox.add(session, message, not_before=utcnow() + timedelta(minutes=10))
        gauges = {f.name: f.samples[0].value for f in StoreCollector(store).collect() if f.samples}
    finally:
        store.close()

    assert gauges["plangate_outbox_backlog"] == 2
    assert gauges["plangate_outbox_delayed"] == 1


def test_each_help_text_says_what_is_counted_and_for_which_process() -> None:
    """A scrape's HELP texts are read by whoever wires plangate into monitoring: the intake's
    ended with a changelog remark ("Throttled callers were seen only in access logs."), and
    the gate's gauges said "this gate" in every process, planners and serve included.
    """
    helps = {family.name: family.documentation for family in REGISTRY.collect()}

    assert "were seen" not in helps["plangate_intake_goals"]
    for name in ("plangate_audit_sealing_stopped", "plangate_policy_file_unusable"):
        assert "this gate" not in helps[name], name
        assert "a process that runs no gate" in helps[name], name
