"""The step ledger: what one run of a plan records is what every run of it goes on with."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from executor_worker.ledger import StepLedger
from plangate.catalog import load_catalog
from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import Retry
from plangate.store import StepRunRow
from plangate.tools import ToolRegistry, tool
from schemas import Plan, Step, ToolSpec, utcnow
from tests.conftest import SEED_GOAL
from tests.support import (
    audit_entries,
    audit_kinds,
    eventually,
    only_plan,
    running_pipeline,
    write_playbook,
    write_yaml,
)

KEY = "0123456789abcdef0123456789abcdef01234567"  # the idempotency key a claim records


@tool(effect="read", idempotent=True)
def census() -> int:
    """Count everyone."""
    return 128


@tool(effect="read", idempotent=True)
def threshold() -> int:
    """The most there may be."""
    return 100


def test_the_first_recorded_result_of_a_read_is_the_one_every_run_goes_on_with(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan held for review, and two runs of it (a redelivery while it ran)
    that both called the `count` read and got different answers,
    When each records its answer,
    Then the second is told the first's answer, the store keeps the first, and the audit log
    has one entry for the step.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    plan = only_plan(pipeline.store, goal_id)
    count = plan.step("count")
    first, second = (StepLedger(pipeline.store, plan) for _ in range(2))

    kept = first.record_read(count, "succeeded", 128, None)
    told = second.record_read(count, "succeeded", 131, None)

    assert (kept.status, kept.output) == ("succeeded", 128)
    assert (told.status, told.output) == ("succeeded", 128)
    with pipeline.store.session() as session:
        assert session.get_one(StepRunRow, (plan.plan_id, "count")).output == 128
    assert audit_kinds(pipeline.store, goal_id).count("step.succeeded") == 1


def test_a_read_claimed_by_an_older_executor_is_waited_for_until_its_lease_runs_out(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan's `count` read claimed by an executor of an older version (reads
    were claimed then), its lease still live,
    When this version records its own answer,
    Then it is told to retry later (that executor will record its answer over this one);
    once the lease has run out, this answer replaces the abandoned claim.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    plan = only_plan(pipeline.store, goal_id)
    count = plan.step("count")
    with pipeline.store.session() as session:
        claim = {"goal_id": goal_id, "tool": count.tool, "status": "running", "attempt": 1}
        claim["started_at"] = utcnow()
        live = utcnow() + timedelta(minutes=5)
        row = StepRunRow(plan_id=plan.plan_id, step_id="count", lease_until=live, **claim)
        session.add(row)
    ledger = StepLedger(pipeline.store, plan)

    with pytest.raises(Retry):
        ledger.record_read(count, "succeeded", 131, None)

    with pipeline.store.session() as session:
        session.get_one(StepRunRow, (plan.plan_id, "count")).lease_until = utcnow()
    told = ledger.record_read(count, "succeeded", 131, None)
    assert (told.status, told.output) == ("succeeded", 131)


def test_a_run_goes_on_with_the_answer_another_run_recorded_first_for_a_read(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan `count` (read) then `announce(${count})` (write), approved by policy, where
    another run of the plan records `count` = 128 while this run's own call returns 131,
    When the run records its answer,
    Then it goes on with the recorded 128: it announces 128, once, and calls `census` once.
    """
    announced: list[int] = []
    calls: list[int] = []

    @tool(effect="read", idempotent=True)
    def census() -> int:
        """Count everyone (another run of the plan records its count first, the first time)."""
        calls.append(1)
        if len(calls) == 1:
            plan = only_plan(pipeline.store, goal_id)
            other_run = StepLedger(pipeline.store, plan)
            other_run.record_read(plan.step("count"), "succeeded", 128, None)
        return 131

    @tool(effect="write", idempotent=True)
    def announce(n: int) -> None:
        """Announce the count."""
        announced.append(n)

    playbook = write_playbook(
        tmp_path,
        "census",
        [
            {"id": "count", "tool": "census"},
            {"id": "tell", "tool": "announce", "args": {"n": "${count}"}},
        ],
    )
    policy = approving_policy(tmp_path)
    registry = ToolRegistry([census, announce])
    with running_pipeline(
        settings, playbook_file=playbook, policy_file=policy, registry=registry
    ) as pipeline:
        goal_id = pipeline.submit("take the census").goal_id

        goal = pipeline.wait_for(goal_id, timeout=10)

    assert goal.status == "completed", goal.status_reason
    assert announced == [128]
    assert len(calls) == 1


def test_a_takeover_tells_the_tool_the_attempt_the_store_records(pipeline: Pipeline) -> None:
    """Given the seed plan's idempotent `notify`-like write claimed by an executor that died
    (attempt 1, its lease run out),
    When another executor claims the step,
    Then it runs attempt 2, and the store records attempt 2.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    plan = only_plan(pipeline.store, goal_id)
    step = plan.step("count")
    with pipeline.store.session() as session:
        claim = {"goal_id": goal_id, "tool": step.tool, "status": "running", "attempt": 1}
        expired = utcnow() - timedelta(seconds=1)
        session.add(
            StepRunRow(
                plan_id=plan.plan_id,
                step_id="count",
                lease_until=expired,
                started_at=expired,
                **claim,
            )
        )
    spec = load_catalog(pipeline.store)["ticket_count"]
    assert spec.idempotent

    taken = StepLedger(pipeline.store, plan).claim(step, spec, KEY)

    assert (taken.kind, taken.attempt) == ("run", 2)
    with pipeline.store.session() as session:
        assert session.get_one(StepRunRow, (plan.plan_id, "count")).attempt == 2


def test_a_runs_reads_are_recorded_together_before_the_step_that_reads_them(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan of two reads, `count` and `limit`, and a write `announce(${count})` when
    `count` exceeds `limit`,
    When it runs,
    Then both reads are recorded in one transaction (at one time), before `announce` starts:
    it runs once, with the recorded count.
    """
    announced: list[int] = []
    recorded_before_announce: list[int] = []

    @tool(effect="write", idempotent=True)
    def announce(n: int) -> None:
        """Announce the count."""
        with pipeline.store.reading() as session:
            rows = session.query(StepRunRow).filter(StepRunRow.step_id.in_(["count", "limit"]))
            recorded_before_announce.append(len(rows.all()))
        announced.append(n)

    playbook = write_playbook(
        tmp_path,
        "census",
        [
            {"id": "count", "tool": "census"},
            {"id": "limit", "tool": "threshold"},
            {
                "id": "tell",
                "tool": "announce",
                "args": {"n": "${count}"},
                "when": "steps.count.output > steps.limit.output",
            },
        ],
    )
    policy = approving_policy(tmp_path)
    registry = ToolRegistry([census, threshold, announce])
    with running_pipeline(
        settings, playbook_file=playbook, policy_file=policy, registry=registry
    ) as pipeline:
        goal_id = pipeline.submit("take the census").goal_id
        goal = pipeline.wait_for(goal_id, timeout=10)
        with pipeline.store.reading() as session:
            reads = session.query(StepRunRow).filter(StepRunRow.step_id.in_(["count", "limit"]))
            finished = {row.finished_at for row in reads}

    assert goal.status == "completed", goal.status_reason
    assert announced == [128]
    assert recorded_before_announce == [2]
    assert len(finished) == 1


def approving_policy(tmp_path: Path) -> Path:
    """Write a policy that approves every plan; return its path."""
    rule = {"name": "all", "match": "true", "action": "approve", "reason": "test"}
    return write_yaml(tmp_path / "policy.yaml", {"mode": "enforce", "rules": [rule]})


def test_a_plan_of_reads_then_a_write_takes_its_executor_three_transactions(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan of two reads and then a write,
    When it runs,
    Then its executor commits three transactions: the run's start, the two reads together with
    the write's claim, and the write's result with the goal's move to `completed`; observers
    hear of every step before they hear that the goal completed.
    """

    @tool(effect="write", idempotent=True)
    def announce(n: int, limit: int) -> None:
        """Announce the count."""

    playbook = write_playbook(
        tmp_path,
        "census",
        [
            {"id": "count", "tool": "census"},
            {"id": "limit", "tool": "threshold"},
            {"id": "tell", "tool": "announce", "args": {"n": "${count}", "limit": "${limit}"}},
        ],
    )
    registry = ToolRegistry([census, threshold, announce])
    committed_by: list[str] = []
    with running_pipeline(
        settings, playbook_file=playbook, policy_file=approving_policy(tmp_path), registry=registry
    ) as pipeline:

        @event.listens_for(pipeline.store.engine, "commit")
        def _on_commit(_connection: object) -> None:
            committed_by.append(threading.current_thread().name)

        with pipeline.bus.observe() as observer:
            goal_id = pipeline.submit("take the census").goal_id
            heard: list[str] = []
            while "execution.completed" not in heard:
                message = observer.next(timeout=10)
                assert message is not None, f"heard only {heard}"
                heard.append(message.type)
            goal = pipeline.wait_for(goal_id, timeout=10)

    assert goal.status == "completed", goal.status_reason
    executor = [name for name in committed_by if "executor" in name or "step" in name]
    assert len(executor) == 3, committed_by
    assert heard.count("step.finished") == 3  # all of them before the goal's outcome


def test_reads_that_ran_side_by_side_show_how_long_each_took(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan of two reads that run side by side, each taking 200 ms,
    When it completes,
    Then the status people read shows each read's time (at least 200 ms), not 0 ms: a read is
    recorded once it has answered, and its start is kept all the same.
    """

    @tool(effect="read", idempotent=True)
    def slow_census() -> int:
        """Count everyone, slowly."""
        time.sleep(0.2)  # the work being timed, not synchronisation
        return 128

    @tool(effect="read", idempotent=True)
    def slow_threshold() -> int:
        """The most there may be, slowly."""
        time.sleep(0.2)
        return 100

    playbook = write_playbook(
        tmp_path,
        "census",
        [{"id": "count", "tool": "slow_census"}, {"id": "limit", "tool": "slow_threshold"}],
    )
    registry = ToolRegistry([slow_census, slow_threshold])
    with running_pipeline(
        settings, playbook_file=playbook, policy_file=approving_policy(tmp_path), registry=registry
    ) as pipeline:
        goal_id = pipeline.submit("take the census").goal_id
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
        with Client(pipeline.settings) as client:
            results = client.goal(goal_id).status().results

    assert [r.step_id for r in results] == ["count", "limit"]
    assert all(r.duration_ms is not None and r.duration_ms >= 200 for r in results), results


def test_a_read_that_ends_beside_a_long_step_is_recorded_and_told_while_that_step_runs(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan of a quick read `count` beside a write `wait` that runs until the test
    lets it end,
    When the read has answered and the write still runs,
    Then observers hear that `count` finished and the store holds its result, before the write
    ends: both waited for the run's end (`plangate run` showed a 1 s read only when an 8 s
    write beside it ended, and an interrupted run that ended first lost the read's record).
    """
    release = threading.Event()

    @tool(effect="write", idempotent=True, timeout=30)
    def wait_for_the_test() -> None:
        """Run until the test says."""
        assert release.wait(20), "the test never let the write end"

    playbook = write_playbook(
        tmp_path,
        "census",
        [{"id": "count", "tool": "census"}, {"id": "wait", "tool": "wait_for_the_test"}],
    )
    registry = ToolRegistry([census, wait_for_the_test])
    with running_pipeline(
        settings, playbook_file=playbook, policy_file=approving_policy(tmp_path), registry=registry
    ) as pipeline:
        try:
            with pipeline.bus.observe(types=["step.finished"]) as observer:
                goal_id = pipeline.submit("take the census").goal_id
                told = observer.next(timeout=10)
                with pipeline.store.reading() as session:
                    rows = session.query(StepRunRow).filter(StepRunRow.step_id == "count")
                    recorded = [(row.status, row.output) for row in rows]
            running = not release.is_set()
        finally:
            release.set()
        goal = pipeline.wait_for(goal_id, timeout=10)

    assert running
    assert told is not None
    assert told.step_id == "count"  # type: ignore[attr-defined]
    assert recorded == [("succeeded", 128)]
    assert goal.status == "completed", goal.status_reason


def _held_seed_plan(pipeline: Pipeline) -> tuple[str, Plan, Step, ToolSpec]:
    """The seed plan, held for review, with its write step and the write's tool spec."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    plan = only_plan(pipeline.store, goal_id)
    step = next(s for s in plan.steps if s.tool == "notify_oncall")
    return goal_id, plan, step, load_catalog(pipeline.store)["notify_oncall"]


def test_a_write_result_recorded_again_after_its_commit_answer_was_lost_is_audited_once(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan's write claimed and called, its result's commit landing just as the
    connection dropped (so the executor, told nothing, records it again),
    When the same result is recorded a second time,
    Then the audit log has one end of the step, and the row keeps the result.
    """
    goal_id, plan, step, spec = _held_seed_plan(pipeline)
    ledger = StepLedger(pipeline.store, plan)
    assert ledger.claim(step, spec, KEY).kind == "run"

    ledger.record(step, "succeeded", {"paged": True}, None, attempt=1)
    ledger.record(step, "succeeded", {"paged": True}, None, attempt=1)

    kinds = audit_kinds(pipeline.store, goal_id)
    assert kinds.count("step.succeeded") == 1
    assert "step.late_result" not in kinds
    with pipeline.store.session() as session:
        assert session.get_one(StepRunRow, (plan.plan_id, step.id)).output == {"paged": True}


def test_a_write_result_coming_back_after_another_executor_took_the_step_over_replaces_nothing(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan's idempotent write claimed by one executor, whose lease ran out, then
    taken over and recorded by another,
    When the first executor's result comes back,
    Then the step keeps the second's result, and the first is audited as a late result.
    """
    goal_id, plan, step, spec = _held_seed_plan(pipeline)
    first = StepLedger(pipeline.store, plan)
    assert first.claim(step, spec, KEY).kind == "run"
    with pipeline.store.session() as session:
        session.get_one(StepRunRow, (plan.plan_id, step.id)).lease_until = utcnow()
    second = StepLedger(pipeline.store, plan)
    assert second.claim(step, spec, KEY).attempt == 2
    second.record(step, "succeeded", {"by": "second"}, None, attempt=2)

    first.record(step, "succeeded", {"by": "first"}, None, attempt=1)

    with pipeline.store.session() as session:
        row = session.get_one(StepRunRow, (plan.plan_id, step.id))
        assert (row.attempt, row.output) == (2, {"by": "second"})
    kinds = audit_kinds(pipeline.store, goal_id)
    assert (kinds.count("step.succeeded"), kinds.count("step.late_result")) == (1, 1)


def _unreachable(calls: list[int]) -> Callable[[], AbstractContextManager[Session]]:
    """A store's `session` that finds the database gone, counting each try."""

    def session() -> AbstractContextManager[Session]:
        calls.append(1)
        gone = ConnectionRefusedError("server closed the connection unexpectedly")
        raise OperationalError("SELECT 1", {}, gone)

    return session


def test_a_write_result_waits_for_the_database_only_for_what_is_left_of_its_claim(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the seed plan's write claimed with a one-second lease that has since run out,
    When its result is to be recorded while the database does not answer,
    Then it is tried once, not for another lease from the failure (another executor may
    have the step by now), and the log says the result is not recorded and what follows.
    """
    _, plan, step, spec = _held_seed_plan(pipeline)
    ledger = StepLedger(pipeline.store, plan, lease=timedelta(seconds=1))
    assert ledger.claim(step, spec, KEY).kind == "run"
    eventually(lambda: ledger.lease_left(step) == 0, timeout=5, what="the claim run out")
    calls: list[int] = []
    monkeypatch.setattr(pipeline.store, "session", _unreachable(calls))

    with pytest.raises(OperationalError):
        ledger.record(step, "succeeded", {"paged": True}, None, attempt=1)

    assert calls == [1]
    given_up = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("is not recorded" in m and repr(step.id) in m for m in given_up), given_up


def test_a_write_result_kept_through_an_outage_is_logged_once_when_it_starts_and_once_when_recorded(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the seed plan's write claimed and called,
    When the database fails the result's first three tries, then answers,
    Then the result is recorded, and the log says so in two lines, not one a try: the store's
    outage as it begins and as it ends, and what waited for it as it began and once recorded.
    """
    goal_id, plan, step, spec = _held_seed_plan(pipeline)
    ledger = StepLedger(pipeline.store, plan)
    assert ledger.claim(step, spec, KEY).kind == "run"
    calls: list[int] = []
    failing, answering = _unreachable(calls), pipeline.store.session

    def flaky() -> AbstractContextManager[Session]:
        return failing() if len(calls) < 3 else answering()

    monkeypatch.setattr(pipeline.store, "session", flaky)
    caplog.set_level(logging.INFO, logger="plangate.store")

    ledger.record(step, "succeeded", {"paged": True}, None, attempt=1)

    monkeypatch.undo()
    assert audit_kinds(pipeline.store, goal_id).count("step.succeeded") == 1
    outage = [r.getMessage() for r in caplog.records if r.name == "plangate.store.outages"]
    assert len(outage) == 2, outage
    assert "does not answer" in outage[0]
    assert "answers again" in outage[1]
    waited = [r.getMessage() for r in caplog.records if r.name == "plangate.store.outage_retry"]
    assert len(waited) == 2, waited
    assert f"recording step {step.id!r}'s result (succeeded)" in waited[0]
    assert "recorded after" in waited[1]


def test_a_write_result_coming_back_after_a_person_settled_it_as_not_happened_records_nothing(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan's write claimed by an executor that then stopped answering, and a
    person's "it did not happen" (which removes the step's row, so that it runs again),
    When that executor's result finally arrives,
    Then no row is made of it (it was taken as the step's result, and the re-run then reused
    it), and it is audited as a late result.
    """
    goal_id, plan, step, spec = _held_seed_plan(pipeline)
    ledger = StepLedger(pipeline.store, plan)
    assert ledger.claim(step, spec, KEY).kind == "run"
    with pipeline.store.session() as session:  # as `settle --not-happened` does
        session.delete(session.get_one(StepRunRow, (plan.plan_id, step.id)))

    ledger.record(step, "succeeded", {"paged": True}, None, attempt=1)

    with pipeline.store.session() as session:
        assert session.get(StepRunRow, (plan.plan_id, step.id)) is None
    [late] = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "step.late_result"]
    assert late.data["recorded"] == "settled as not happened"
    assert "step.succeeded" not in audit_kinds(pipeline.store, goal_id)
