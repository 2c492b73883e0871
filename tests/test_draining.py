"""SIGTERM drains an executor: the tool calls in flight end, no new step starts, and the run's
message goes back to the broker for another executor, which resumes it at the next step.

It ran the rest of the plan it held instead: two 60 s writes in a row outlasted Kubernetes'
60 s grace period, and the SIGKILL landed mid-write (a write of unknown outcome, for a person).
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from executor_worker.engine import DagWalk, StepOutcome
from plangate.bus import Bus, Delivery, Envelope
from plangate.client import Client
from plangate.errors import HandBack
from schemas import GoalSubmitted, Message, Plan, Step
from tests.fleet import Fleet
from tests.support import eventually, write_playbook

ROOT = Path(__file__).resolve().parent.parent
APPROVE_ALL = 'rules:\n  - {name: approve-all, match: "true", action: approve, reason: test}\n'
FIRST, SECOND = 4.0, 6.0  # how long each write takes: the workload, not a synchronisation
WAIT = 30.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fleet(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    steps = [
        {"id": "a", "tool": "slow_write", "args": {"name": "a", "seconds": FIRST}},
        {"id": "b", "tool": "slow_write", "args": {"name": "b", "seconds": SECOND}, "after": ["a"]},
    ]
    database = f"sqlite:///{tmp_path / 'plangate.db'}"
    if request.param == "postgresql":
        database = request.getfixturevalue("postgres_database_url")
    # Neither the reconciler nor Redis' restore of an unacked message would bring the run
    # back within the test: only the message handed back does.
    fleet = draining_fleet(tmp_path, redis_url, database, steps, redelivery_after=600)
    try:
        yield fleet
    finally:
        fleet.stop_all()


def draining_fleet(
    folder: Path, redis_url: str, database: str, steps: list[dict[str, Any]], redelivery_after: int
) -> Fleet:
    """Return a fleet (no worker started yet) whose goal "drain please" runs `steps`."""
    (folder / "policy.yaml").write_text(APPROVE_ALL)
    playbook = write_playbook(folder, "drain", steps)
    (folder / "writes.log").touch()
    fleet = Fleet(
        redis_url,
        database,
        folder,
        extra_env={
            "PLANGATE_POLICY_FILE": str(folder / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(playbook),
            "PLANGATE_TOOLS": "tests.draining_tools",
            "PYTHONPATH": str(ROOT),
            "DRAINING_LOG": str(folder / "writes.log"),
            "PLANGATE_SWEEP_INTERVAL_SECONDS": "0.5",
            "PLANGATE_RECONCILE_AFTER_SECONDS": "600",
            "PLANGATE_REDELIVERY_AFTER_SECONDS": str(redelivery_after),
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    return fleet


def writes(fleet: Fleet) -> list[tuple[str, str, str]]:
    """Return each line of the writes' log as (pid, start or end, write)."""
    lines = (fleet.folder / "writes.log").read_text().splitlines()
    return [(pid, word, name) for pid, word, name in (line.split() for line in lines)]


def consuming(fleet: Fleet) -> int:
    return sum("worker started" in log.read_text() for log in fleet.folder.glob("executor-*.log"))


@pytest.mark.redis
def test_sigterm_during_a_write_ends_it_starts_no_next_step_and_another_executor_resumes(
    fleet: Fleet,
) -> None:
    """Given one executor running a plan of two slow writes, a then b (not idempotent),
    When it gets SIGTERM while write a is being called,
    Then it lets a end and records it, starts no b, says what it waits for and that it hands
    the run back, and exits soon after a ends; the goal stays running with its message back
    in the queue (nothing dead-lettered). A second executor then completes the goal, each
    write called exactly once: a by the first executor, b by the second.
    """
    fleet.start("planner")
    fleet.start("gate")
    first = fleet.start("executor")
    eventually(lambda: consuming(fleet) == 1, WAIT, "the executor to consume")
    with Client(fleet.settings()) as client:
        goal_id = client.submit("drain please").goal_id
        eventually(lambda: writes(fleet), WAIT, f"write a to begin\n{fleet.logs()}")
        first.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        assert first.wait(timeout=FIRST + SECOND + 10) == 0, fleet.logs()
        took = time.monotonic() - signalled
        assert writes(fleet) == [(str(first.pid), "start", "a"), (str(first.pid), "end", "a")]
        assert took < FIRST + 3.0, f"it exited {took:.1f} s after SIGTERM\n{fleet.logs()}"
        left = client.status(goal_id)
        assert (left.status, left.steps) == ("running", {"a": "succeeded"})
        said = (fleet.folder / "executor-2.log").read_text()
        waits = f"received SIGTERM: finishing 1 tool call in flight (goal {goal_id} step 'a')"
        assert f"{waits}; no new step starts" in said
        handed_back = f"goal {goal_id}'s run (plan {left.plan_id}) stopped"
        assert f"{handed_back} after step 'a', as this executor stops; step 'b' is left" in said
        bus = Bus(fleet.broker_url, fleet.namespace)
        try:
            assert bus.queue_depth("executor") == 1, fleet.logs()
            assert bus.dead_letters() == []
        finally:
            bus.close()

        second = fleet.start("executor")
        eventually(
            lambda: client.status(goal_id).status in ("completed", "failed", "needs_attention"),
            WAIT,
            f"the goal to end\n{fleet.logs()}",
        )
        status = client.status(goal_id)

    assert status.status == "completed", fleet.logs()
    assert writes(fleet) == [
        (str(first.pid), "start", "a"),
        (str(first.pid), "end", "a"),
        (str(second.pid), "start", "b"),
        (str(second.pid), "end", "b"),
    ]


READ_SECONDS = 8.0  # four redelivery timeouts: the workload, not a synchronisation


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_a_draining_executor_keeps_its_message_so_no_other_executor_calls_its_step_again(
    tmp_path: Path, redis_url: str
) -> None:
    """An executor at SIGTERM stopped renewing the message of the run it drained: the
    redelivery timeout later another executor took the run and called the same read again,
    beside the first call (every tool call longer than 30 s, at every rolling upgrade).

    Given two executors, messages restored 2 s after their holder stops renewing them, and
    a read that takes 8 s,
    When the executor calling it gets SIGTERM,
    Then it lets the call end while it keeps its message: the other executor never starts
    the read, and completes the goal once the run is handed back, the read called once.
    """
    read = {"id": "a", "tool": "slow_read", "args": {"name": "a", "seconds": READ_SECONDS}}
    database = f"sqlite:///{tmp_path / 'plangate.db'}"
    fleet = draining_fleet(tmp_path, redis_url, database, [read], redelivery_after=2)
    try:
        fleet.start("planner")
        fleet.start("gate")
        executors = {process.pid: process for process in (fleet.start("executor") for _ in "ab")}
        eventually(lambda: consuming(fleet) == 2, WAIT, "both executors to consume")
        with Client(fleet.settings()) as client:
            goal_id = client.submit("drain please").goal_id
            eventually(lambda: writes(fleet), WAIT, f"the read to begin\n{fleet.logs()}")
            calling = executors[int(writes(fleet)[0][0])]
            calling.send_signal(signal.SIGTERM)

            assert calling.wait(timeout=READ_SECONDS + 10) == 0, fleet.logs()
            eventually(
                lambda: client.status(goal_id).terminal, WAIT, f"the goal to end\n{fleet.logs()}"
            )
            status = client.status(goal_id)
    finally:
        fleet.stop_all()

    assert status.status == "completed", fleet.logs()
    assert writes(fleet) == [(str(calling.pid), "start", "a"), (str(calling.pid), "end", "a")]


def test_a_message_handed_back_goes_back_to_the_queue_as_it_came(bus: Bus) -> None:
    """Given a consumer whose handler hands its message back once the worker is stopping,
    When a goal's message is being handled and the consumer is stopped,
    Then the message is neither acked nor dead-lettered nor retried: it is in the queue again,
    and the next consumer gets it with its attempt unchanged (stopping is no failure of its).
    """
    began: queue.Queue[int] = queue.Queue()
    stop = threading.Event()

    def handing_back(message: Message, delivery: Delivery) -> list[Envelope]:
        began.put(delivery.attempt)
        stop.wait(WAIT)
        raise HandBack("the worker is stopping")

    consumer = bus.stage_consumer("planner", handing_back, retry_delays=(0.01,))
    stopped = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    stopped.start()
    assert consumer.ready.wait(WAIT)
    sent = GoalSubmitted(goal_id="g1", text="count open tickets")
    bus.publish([Envelope.of(sent)])
    assert began.get(timeout=WAIT) == 1
    stop.set()
    stopped.join(WAIT)
    assert not stopped.is_alive(), "the consumer did not stop"

    assert bus.queue_depth("planner") == 1
    assert bus.dead_letters() == []
    handled: queue.Queue[tuple[Message, int]] = queue.Queue()
    again = bus.stage_consumer("planner", lambda m, d: handled.put((m, d.attempt)) or [])
    stop_again = threading.Event()
    resumed = threading.Thread(target=again.run, args=(stop_again,), daemon=True)
    resumed.start()
    try:
        assert handled.get(timeout=WAIT) == (sent, 1)
    finally:
        stop_again.set()
        resumed.join(WAIT)
    assert bus.queue_depth("planner") == 0


def test_a_stop_during_a_wave_lets_its_steps_end_and_starts_none_after_them() -> None:
    """Given a plan of two steps that run at once and a third after both,
    When the executor stops while the two are being called,
    Then both end with their outcomes, the third is not started, and the walk says so.
    """
    both_called = threading.Barrier(3, timeout=WAIT)
    stop = threading.Event()
    called: list[str] = []

    class Walk(DagWalk):
        def _call(self, step: Step, args: dict[str, Any]) -> StepOutcome:
            called.append(step.id)
            both_called.wait()  # the test stops the executor here
            both_called.wait()
            return StepOutcome(step.id, step.tool, "succeeded", output=step.id)

        def _stopping(self) -> bool:
            return stop.is_set()

    plan = Plan(
        plan_id="plan-1",
        goal_id="goal-1",
        revision=1,
        steps=(
            Step(id="left", tool="census"),
            Step(id="right", tool="census"),
            Step(id="total", tool="census", after=("left", "right")),
        ),
    )
    with ThreadPoolExecutor(2) as pool:
        walk = Walk(plan, pool)
        ended = threading.Thread(target=walk.run)
        ended.start()
        both_called.wait()
        stop.set()
        both_called.wait()
        ended.join(WAIT)

    assert sorted(called) == ["left", "right"]
    assert {step_id: o.status for step_id, o in walk.outcomes.items()} == {
        "left": "succeeded",
        "right": "succeeded",
    }
    assert walk.not_started == ["total"]
