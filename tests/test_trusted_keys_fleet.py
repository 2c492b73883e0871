"""An executor whose trusted keys folder lacks the gate's key, run as a deployment runs it:
worker processes on Redis, each with a data folder of its own, the gate writing its public key
to the folder it shares, the executor given (by mistake) an empty one of its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from plangate.store import GoalRow, open_store
from tests.fleet import FAST_SWEEPS, Fleet
from tests.test_forged_approvals import poll

pytestmark = [pytest.mark.redis, pytest.mark.timeout(150)]
READ_ONLY_GOAL = "how many tickets are open"


def test_a_goal_waits_for_the_gate_s_key_and_runs_once_the_executor_has_it(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a gate that writes its public key to its folder, and an executor whose trusted keys
    folder is empty,
    When a read-only goal is approved by policy, Then the executor says at start that it has no
    key, the goal waits in `approved` (it failed for good), no step runs; and once the key is
    copied into the executor's folder, the goal completes, with no worker restarted.
    """
    shared, own = tmp_path / "gate-keys", tmp_path / "executor-keys"
    shared.mkdir()
    own.mkdir()
    database_url = f"sqlite:///{tmp_path / 'plangate.db'}"
    fleet = Fleet(broker_url=redis_url, database_url=database_url, folder=tmp_path)
    fleet.extra_env.update(FAST_SWEEPS)
    assert fleet.plangate("db", "upgrade").returncode == 0
    fleet.start("planner", PLANGATE_DATA_DIR=str(tmp_path / "planner-data"))
    fleet.start(
        "gate", PLANGATE_DATA_DIR=str(tmp_path / "gate-data"), PLANGATE_TRUSTED_KEYS_DIR=str(shared)
    )
    fleet.start(
        "executor",
        PLANGATE_DATA_DIR=str(tmp_path / "executor-data"),
        PLANGATE_TRUSTED_KEYS_DIR=str(own),
    )
    store = open_store(database_url)
    try:
        submitted = fleet.plangate("submit", READ_ONLY_GOAL, "--json")
        assert submitted.returncode == 0, submitted.stderr
        goal_id = json.loads(submitted.stdout)["goal_id"]

        def status() -> str:
            with store.session() as session:
                return session.get_one(GoalRow, goal_id).status

        poll(lambda: "cannot check the gate's approval" in fleet.logs(), "the refusal", fleet)
        assert status() == "approved", fleet.logs()
        assert "no trusted keys in" in fleet.logs()
        # Said where people look: `status` read "the gate checks the hold and releases the
        # plan", and only the executor's log said why nothing ran.
        waiting = fleet.plangate("status", goal_id)
        as_json = json.loads(fleet.plangate("status", goal_id, "--json").stdout)

        for key in shared.glob("*.pub"):
            shutil.copy(key, own / key.name)
        poll(lambda: status() == "completed", "the goal's run", fleet, timeout=90)
        done = json.loads(fleet.plangate("status", goal_id, "--json").stdout)
    finally:
        store.close()
        fleet.stop_all()

    said = " ".join(waiting.stdout.split())
    assert "waiting: an executor cannot check the approval: approval refused: signed by" in said
    assert "add its public key (from the gate's data folder) to the trusted keys folder" in said
    assert "signed by unknown key" in as_json["approval_unchecked"]
    assert done["approval_unchecked"] is None


def test_an_executor_started_before_the_gate_made_the_shared_keys_folder_waits_for_its_key(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a shared volume where the gate makes `trusted/` as it starts (compose's `keys`),
    When the executor starts first, the folder not made yet, then the planner and the gate,
    Then the executor keeps running, saying it has no key yet, and a goal completes: it
    exited at start ("which is no folder"), and compose restarted it until the gate was up.
    """
    volume = tmp_path / "keys"
    volume.mkdir()
    database_url = f"sqlite:///{tmp_path / 'plangate.db'}"
    fleet = Fleet(broker_url=redis_url, database_url=database_url, folder=tmp_path)
    fleet.extra_env.update(FAST_SWEEPS, PLANGATE_TRUSTED_KEYS_DIR=str(volume / "trusted"))
    assert fleet.plangate("db", "upgrade").returncode == 0
    executor = fleet.start("executor")
    try:
        poll(lambda: "no trusted keys in" in fleet.logs(), "the executor's warning", fleet)
        assert executor.poll() is None, fleet.logs()
        fleet.start("planner")
        fleet.start("gate")
        done = fleet.plangate("submit", READ_ONLY_GOAL, "--wait", "--json", timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr + fleet.logs()
        assert json.loads(done.stdout)["status"] == "completed"
    finally:
        fleet.stop_all()


def test_an_executor_given_a_keys_folder_on_no_volume_at_all_refuses_to_start(
    tmp_path: Path, redis_url: str
) -> None:
    """Given PLANGATE_TRUSTED_KEYS_DIR naming a folder whose parent does not exist (a typo),
    When an executor starts, Then it stops at once, saying the setting names no folder."""
    fleet = Fleet(
        broker_url=redis_url, database_url=f"sqlite:///{tmp_path / 'p.db'}", folder=tmp_path
    )
    fleet.extra_env["PLANGATE_TRUSTED_KEYS_DIR"] = str(tmp_path / "no-such-volume" / "trusted")
    assert fleet.plangate("db", "upgrade").returncode == 0
    executor = fleet.start("executor")
    try:
        assert executor.wait(timeout=30) != 0
        assert "PLANGATE_TRUSTED_KEYS_DIR names" in fleet.logs()
        assert "which is no folder" in fleet.logs()
    finally:
        fleet.stop_all()


def test_a_key_removed_from_the_folder_is_refused_by_a_running_executor_at_once(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a fleet sharing the gate's public key, one goal run under it,
    When the operator removes that key's file (a revocation), no worker restarted, and a goal
    is submitted, Then the running executor refuses the gate's approval ("signed by unknown
    key") and runs no step: it checked the folder only for keys it did not know, so a revoked
    key kept working until every executor restarted; put back, the goal completes.
    """
    shared = tmp_path / "keys"
    database_url = f"sqlite:///{tmp_path / 'plangate.db'}"
    fleet = Fleet(broker_url=redis_url, database_url=database_url, folder=tmp_path)
    fleet.extra_env.update(FAST_SWEEPS, PLANGATE_TRUSTED_KEYS_DIR=str(shared))
    assert fleet.plangate("db", "upgrade").returncode == 0
    for stage in ("planner", "gate", "executor"):
        fleet.start(stage)
    store = open_store(database_url)
    try:
        first = fleet.plangate("submit", READ_ONLY_GOAL, "--wait", "--json", timeout=90)
        assert json.loads(first.stdout)["status"] == "completed", first.stderr + fleet.logs()
        (key,) = shared.glob("*.pub")
        revoked = tmp_path / key.name
        key.rename(revoked)

        submitted = fleet.plangate("submit", READ_ONLY_GOAL, "--json")
        goal_id = json.loads(submitted.stdout)["goal_id"]
        poll(lambda: "signed by unknown key" in fleet.logs(), "the executor's refusal", fleet)
        with store.session() as session:
            assert session.get_one(GoalRow, goal_id).status == "approved"

        revoked.rename(key)

        def status() -> str:
            with store.session() as session:
                return session.get_one(GoalRow, goal_id).status

        poll(lambda: status() == "completed", "the goal's run", fleet, timeout=90)
    finally:
        store.close()
        fleet.stop_all()
