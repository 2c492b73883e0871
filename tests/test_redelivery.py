"""On Redis, what a dead worker held comes back by itself; what a live worker holds stays its own.

`plangate.bus.redis_claims`: live consume loops renew their unacked messages; the messages of a
SIGKILLed worker go back to their queue after `redelivery_after_seconds`, with no resend by the
reconciler (which leaves held goals alone).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual
from sqlalchemy import func, select

from plangate.bus import Bus
from plangate.client import Client
from plangate.store import AuditRow, open_store
from tests.fleet import Fleet
from tests.support import write_playbook
from tests.test_takeover import APPROVE_ALL, consuming, poll

ROOT = Path(__file__).resolve().parent.parent
REDELIVERY, SWEEP, LEASE = 1.0, 0.5, 2.0


def test_the_kombu_internals_the_claims_rely_on_are_there() -> None:
    """kombu is pinned to 5.7: if a new version renames these, this fails before a deployment
    silently goes back to kombu's hour-long visibility timeout."""
    assert "visibility_timeout" in kombu_redis.Channel.from_transport_options
    for name in ("unacked_key", "unacked_index_key", "unacked_restore_limit", "conn_or_acquire"):
        assert hasattr(kombu_redis.Channel, name), name
    assert {"num", "interval"} <= set(inspect.signature(kombu_redis.QoS.restore_visible).parameters)
    assert "_delivered" in inspect.getsource(kombu_virtual.QoS.__init__)


def fleet_with(tmp_path: Path, redis_url: str, step_tool: str) -> Fleet:
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    playbook = write_playbook(
        tmp_path,
        "redeliver",
        [
            {"id": "first", "tool": "quick_read"},
            {"id": "second", "tool": step_tool, "args": {"number": "${first}"}},
        ],
    )
    fleet = Fleet(
        redis_url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(playbook),
            "PLANGATE_TOOLS": "tests.takeover_tools",
            "PYTHONPATH": str(ROOT),
            "TAKEOVER_MARKER": str(tmp_path / "stalled.marker"),
            "PLANGATE_STEP_LEASE_SECONDS": str(LEASE),
            "PLANGATE_SWEEP_INTERVAL_SECONDS": str(SWEEP),
            "PLANGATE_REDELIVERY_AFTER_SECONDS": str(REDELIVERY),
            # The reconciler would resend only after ten minutes: recovery here is kombu's.
            "PLANGATE_RECONCILE_AFTER_SECONDS": "600",
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    return fleet


@pytest.fixture
def running(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    fleet = fleet_with(tmp_path, redis_url, request.param)
    try:
        fleet.start("planner")
        fleet.start("gate")
        fleet.start("executor")
        fleet.start("executor")
        poll(lambda: consuming(fleet) == 2, fleet, "both executors to consume")
        yield fleet
    finally:
        fleet.stop_all()


@contextmanager
def running_bus(fleet: Fleet) -> Iterator[Bus]:
    bus = Bus(fleet.broker_url, fleet.namespace, redelivery_after=REDELIVERY)
    try:
        yield bus
    finally:
        bus.close()


def resends(fleet: Fleet) -> int:
    store = open_store(fleet.database_url, upgrade=False)
    try:
        with store.session() as session:
            query = select(func.count()).where(AuditRow.kind == "goal.resent")
            return int(session.execute(query).scalar_one())
    finally:
        store.close()


@pytest.mark.redis
@pytest.mark.parametrize("running", ["stalled_read"], indirect=True)
def test_a_killed_executors_message_comes_back_by_itself_with_no_resend(
    running: Fleet, tmp_path: Path
) -> None:
    """Given two executors, the reconciler set to wait ten minutes, and a 1 s redelivery,
    When the executor running a goal's second read is SIGKILLed,
    Then its message goes back to the queue by itself, the other executor takes the run over
    once the step lease ends, and the goal completes with no resend at all.
    """
    executors = [p for stage, p in running.processes if stage == "executor"]
    with Client(running.settings()) as client:
        goal_id = client.submit("redeliver please").goal_id
        marker = tmp_path / "stalled.marker"
        poll(lambda: marker.exists() and marker.read_text(), running, "the second read to start")
        (doomed,) = [p for p in executors if str(p.pid) == marker.read_text()]
        running.kill(doomed)
        killed_at = time.monotonic()
        poll(lambda: client.status(goal_id).status == "completed", running, "the goal to complete")
        elapsed = time.monotonic() - killed_at

    print(
        f"\ncompleted {elapsed:.2f} s after the kill (lease {LEASE} s, redelivery {REDELIVERY} s)"
    )
    assert resends(running) == 0
    assert elapsed < max(LEASE, REDELIVERY) + 2 * SWEEP + 3.0, running.logs()


@pytest.mark.redis
@pytest.mark.parametrize("running", ["stalled_read"], indirect=True)
def test_a_worker_killed_inside_its_restore_sweep_holds_up_restores_for_one_timeout_only(
    running: Fleet, tmp_path: Path
) -> None:
    """Given the restore lock left held, as by a worker SIGKILLed inside its restore sweep
    (kombu's default would leave it for 300 s),
    When the executor running a goal's second read is SIGKILLed too,
    Then the lock lapses after the redelivery timeout, and the goal still completes with no
    resend, within the lease, two timeouts and the sweeps.
    """
    executors = [p for stage, p in running.processes if stage == "executor"]
    with Client(running.settings()) as client:
        goal_id = client.submit("redeliver please").goal_id
        marker = tmp_path / "stalled.marker"
        poll(lambda: marker.exists() and marker.read_text(), running, "the second read to start")
        with running_bus(running) as bus, bus.connection() as connection:
            channel = connection.default_channel
            # What kombu takes for each sweep, with the expiry plangate gives it.
            left_behind = channel.client.lock(
                channel.unacked_mutex_key, timeout=channel.unacked_mutex_expire
            )
            # A live worker's own sweep may hold it for a moment: wait that out, no longer.
            assert left_behind.acquire(blocking=True, blocking_timeout=5 * REDELIVERY)
            assert channel.unacked_mutex_expire == REDELIVERY
        (doomed,) = [p for p in executors if str(p.pid) == marker.read_text()]
        running.kill(doomed)
        killed_at = time.monotonic()
        poll(lambda: client.status(goal_id).status == "completed", running, "the goal to complete")
        elapsed = time.monotonic() - killed_at

    assert resends(running) == 0
    assert elapsed < max(LEASE, 2 * REDELIVERY) + 2 * SWEEP + 3.0, running.logs()


@pytest.mark.redis
@pytest.mark.parametrize("running", ["slow_read"], indirect=True)
def test_a_live_executors_long_call_is_not_handed_to_another(
    running: Fleet, tmp_path: Path
) -> None:
    """Given two executors and a 1 s redelivery timeout,
    When a step takes three seconds,
    Then its message is renewed while it runs: the call is made once, by one executor.
    """
    with Client(running.settings()) as client:
        goal_id = client.submit("redeliver slowly").goal_id
        poll(lambda: client.status(goal_id).status == "completed", running, "the goal to complete")
    calls = (tmp_path / "stalled.marker.calls").read_text().split()
    assert len(calls) == 1, calls
    logs = running.logs()
    assert "is claimed by a run until" not in logs, logs  # none waited for another's claim
    assert resends(running) == 0
