"""Forgeries change nothing: approvals published straight onto the executor's queue by anyone
who can reach the broker are dead letters, and the goals they name stay held.

Real Redis, worker processes with data folders of their own (only the gate holds the signing
key; the executor reads the public key from a folder the two share), and raw kombu for the
attacker, as a service in another language would publish.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kombu import Connection, Exchange, Producer
from sqlalchemy import select

from plangate.bus import Bus
from plangate.client import Client
from plangate.relay import deliver
from plangate.reviewers import Reviewers, add_reviewer
from plangate.signing import PAYLOAD_TYPE, Signer
from plangate.signing_keys import load_trusted_keys
from plangate.stages import build_review
from plangate.store import ApprovalRow, GoalRow, StepRunRow, Store, open_store
from schemas import Decision, Plan, PlanApproved, Signature, SignedEnvelope, new_id
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet
from tests.support import only_plan, sign_approval

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]
GOALS = 5
WAIT = 30.0


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    """A planner, a gate and an executor, each with its own data folder."""
    trusted = tmp_path / "trusted-keys"
    trusted.mkdir()  # the folder the two share, as a deployment's volume; the gate fills it
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={
            "PLANGATE_TRUSTED_KEYS_DIR": str(trusted),
            # The gate counts an approval only by a reviewer this file lists, proven.
            "PLANGATE_REVIEWERS_FILE": str(tmp_path / "reviewers.yaml"),
            **FAST_SWEEPS,
        },
    )
    add_reviewer(tmp_path / "reviewers.yaml", "alice", [])
    upgrade = fleet.plangate("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    for stage in ("planner", "gate", "executor"):
        fleet.start(stage, PLANGATE_DATA_DIR=str(tmp_path / f"{stage}-data"))
    try:
        yield fleet
    finally:
        fleet.stop_all()


def poll(check: Callable[[], bool], what: str, fleet: Fleet, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{fleet.logs()}"
        time.sleep(0.1)


def statuses(store: Store, goal_ids: list[str]) -> dict[str, str]:
    with store.session() as session:
        rows = session.execute(select(GoalRow).where(GoalRow.id.in_(goal_ids))).scalars()
        return {row.id: row.status for row in rows}


def garbage_signature(plan: Plan, gate_key_id: str) -> PlanApproved:
    """A well-formed approval naming the gate's (public) key id, its signature random bytes."""
    rogue = Signer(Ed25519PrivateKey.generate())
    approval = rogue.approval(plan, APPROVE, timedelta(hours=1))
    payload = approval.model_copy(update={"key_id": gate_key_id}).model_dump_json().encode()
    signature = Signature(keyid=gate_key_id, sig=base64.b64encode(os.urandom(64)).decode())
    envelope = SignedEnvelope(
        payload_type=PAYLOAD_TYPE,
        payload=base64.b64encode(payload).decode(),
        signatures=[signature],
    )
    return PlanApproved(goal_id=plan.goal_id, plan=plan, approval=envelope)


def rogue_key(plan: Plan, _: str) -> PlanApproved:
    """An approval of exactly the plan, signed by a key nobody trusts."""
    return sign_approval(Signer(Ed25519PrivateKey.generate()), plan)


def not_base64(plan: Plan, gate_key_id: str) -> PlanApproved:
    """An envelope whose payload is not even base64."""
    approval = SignedEnvelope(
        payload_type=PAYLOAD_TYPE,
        payload="%%% not base64 %%%",
        signatures=[Signature(keyid=gate_key_id, sig="AAAA")],
    )
    return PlanApproved(goal_id=plan.goal_id, plan=plan, approval=approval)


FORGERIES = (garbage_signature, rogue_key, not_base64)
APPROVE = Decision(action="approve", decided_by="mallory", reason="forged", policy_version="x")


def publish_raw(redis_url: str, queue: str, messages: list[PlanApproved]) -> None:
    """Publish straight onto a queue with kombu's default exchange: no plangate code."""
    with Connection(redis_url) as connection:
        producer = Producer(connection.channel(), exchange=Exchange(""))
        for message in messages:
            body = message.model_dump_json().encode()
            headers = {"x-plangate-goal-id": message.goal_id, "x-plangate-message-id": new_id()}
            producer.publish(
                body,
                routing_key=queue,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
            )


def test_forged_approvals_on_the_executor_queue_are_dead_letters_and_change_nothing(
    fleet: Fleet, redis_url: str
) -> None:
    """Given five goals held for a person, and an approval of another, completed goal,
    When twenty forged, garbage-signed or replayed plan.approved messages naming the held
    goals are published straight onto the executor's queue,
    Then every goal stays held and each forgery is a dead letter with its reason; then one
    genuine approval per goal runs each plan exactly once.
    """
    settings = fleet.settings().model_copy(
        update={"trusted_keys_dir": fleet.folder / "trusted-keys"}
    )
    store = open_store(settings.resolved_database_url(), upgrade=False)
    bus = Bus(settings.broker_url, settings.namespace)
    client = Client(settings)
    try:
        review = build_review(settings, store)
        done = client.submit("how many tickets are open").wait(WAIT)
        assert done.status == "completed", fleet.logs()
        done_id = done.goal_id
        with store.session() as session:
            used = session.execute(
                select(ApprovalRow).where(ApprovalRow.goal_id == done_id)
            ).scalar_one()
            used_envelope = SignedEnvelope.model_validate(used.envelope)

        goal_ids = [client.submit(SEED_GOAL).goal_id for _ in range(GOALS)]
        poll(
            lambda: set(statuses(store, goal_ids).values()) == {"held"},
            "every goal held",
            fleet,
        )
        plans = [only_plan(store, goal_id) for goal_id in goal_ids]
        (gate_key,) = load_trusted_keys(settings).keys()
        forgeries = [forge(plan, gate_key) for plan in plans for forge in FORGERIES]
        forgeries += [
            PlanApproved(goal_id=plan.goal_id, plan=plan, approval=used_envelope) for plan in plans
        ]
        assert len(forgeries) == 20

        publish_raw(redis_url, f"{settings.namespace}.executor", forgeries)

        poll(lambda: len(bus.dead_letters()) >= 20, "twenty dead letters", fleet)
        letters = bus.dead_letters()
        assert len(letters) == 20
        assert {letter.queue for letter in letters} == {f"{settings.namespace}.executor"}
        reasons = [letter.reason for letter in letters]
        assert all("approval refused" in reason or "payload" in reason for reason in reasons)
        assert sum("signed by unknown key" in reason for reason in reasons) == 5
        assert sum("does not match the payload" in reason for reason in reasons) == 5
        assert sum("not valid base64" in reason for reason in reasons) == 5
        assert sum("the plan differs from the one approved" in reason for reason in reasons) == 5
        assert set(statuses(store, goal_ids).values()) == {"held"}

        alice = Reviewers.from_file(fleet.folder / "reviewers.yaml").named("alice")
        assert alice is not None
        for plan in plans:  # as serve does, once alice's token named her
            deliver(store, bus, review.approve(plan.plan_id, "alice", key=alice.token_sha256))

        poll(
            lambda: set(statuses(store, goal_ids).values()) == {"completed"},
            "every goal completed",
            fleet,
        )
        with store.session() as session:
            notify_runs = session.execute(
                select(StepRunRow).where(
                    StepRunRow.goal_id.in_(goal_ids), StepRunRow.step_id == "notify"
                )
            ).scalars()
            assert sorted(run.attempt for run in notify_runs) == [1] * GOALS
        pages = (fleet.folder / "notifications.jsonl").read_text().splitlines()
        assert sorted(json.loads(page)["goal_id"] for page in pages) == sorted(goal_ids)
        assert not list((fleet.folder / "executor-data").rglob("*.pem"))
    finally:
        client.close()
        bus.close()
        store.close()
