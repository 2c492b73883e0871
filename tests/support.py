"""Helpers for end-to-end tests: read what the pipeline stored, wait for what it publishes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kombu.messaging import Producer
from sqlalchemy import Engine, select

from plangate.bus import Bus, Envelope, Observer
from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.reviewers import Reviewer
from plangate.signing import Signer
from plangate.store import (
    ApprovalRow,
    AuditRow,
    GoalRow,
    OutboxRow,
    PlanRow,
    StepRunRow,
    Store,
    audit_records,
    open_store,
)
from plangate.store.goals import plan_of
from schemas import (
    DeadLetter,
    Decision,
    GoalSubmitted,
    Message,
    Plan,
    PlanApproved,
    encode_message,
    utcnow,
)

T = TypeVar("T")

HELD = frozenset({"held"})


def eventually(check: Callable[[], T | None], timeout: float = 5.0, what: str = "it") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        pause.wait(0.02)


@contextmanager
def running_pipeline(
    settings: Settings, *, tampers: bool = False, **overrides: Any
) -> Iterator[Pipeline]:
    """A pipeline on `settings` changed by `overrides` (a policy, a playbook, a registry).

    `planner_in_code` is the pipeline's `planner=` (`planner` is the setting).

    After the block, what `status` shows must agree with the audit log, whatever the test drove
    the goals to; unless the test `tampers` with the rows (to stage a crash, a forgery).
    """
    registry = overrides.pop("registry", None)
    planner = overrides.pop("planner_in_code", None)
    changed = settings.model_copy(update=overrides)
    # The pipeline's bus is its own argument: given only in the settings, a broker_url was
    # ignored and the goal ran on the memory transport (a RabbitMQ test tried nothing).
    broker = {"broker_url": overrides["broker_url"]} if "broker_url" in overrides else {}
    with Pipeline(changed, registry=registry, planner=planner, **broker) as pipeline:
        yield pipeline
        if not tampers:
            problem = audit_records.disagreement(pipeline.store)
            assert problem is None, problem


def get(url: str) -> tuple[int, dict[str, Any]]:
    """GET a JSON answer (a probe's); return its status and body, an error's too."""
    return call(url)


def call(
    url: str, token: str | None = None, payload: object = None, timeout: float = 5
) -> tuple[int, Any]:
    """GET `url` (POST `payload` as JSON if given), as the reviewer `token` names if given.

    Return the status and the JSON body, an error's too.
    """
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def answers(url: str) -> int | None:
    """Return the status `url` answers with (None: nothing answers there)."""
    try:
        return get(url)[0]
    except OSError:
        return None


def outer_environment() -> dict[str, str]:
    """This process's environment without its PLANGATE_*, OPENAI_* or OTEL_* settings."""
    prefixes = ("PLANGATE_", "OPENAI_", "OTEL_")
    return {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}


def plangate_in(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m plangate` on its own data folder, on a wide terminal, with no answers.

    No PLANGATE_*, OPENAI_* or OTEL_* setting of the outer environment reaches it, only `env`'s.
    """
    outer = outer_environment()
    return subprocess.run(
        [sys.executable, "-m", "plangate", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=outer | {"PLANGATE_DATA_DIR": str(data_dir), "COLUMNS": "300"} | env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def write_yaml(path: Path, data: Any) -> Path:
    """Write `data` as YAML to `path` and return the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_private_key(path: Path) -> Ed25519PrivateKey:
    """Write a new Ed25519 private key as PEM (as `openssl genpkey` makes one); return it."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


def write_reviewers(path: Path, reviewers: Sequence[Reviewer]) -> Path:
    """Write a reviewers file listing `reviewers` (their token hashes, as the file keeps them)."""
    entries = [
        {"name": r.name, "token_sha256": r.token_sha256, "roles": sorted(r.roles)}
        for r in reviewers
    ]
    return write_yaml(path, {"reviewers": entries})


def write_playbook(folder: Path, name: str, steps: list[dict[str, Any]]) -> Path:
    """Write a playbook file of one playbook, `name`, for goals that mention `name`."""
    playbook = {"name": name, "pattern": name, "steps": steps}
    return write_yaml(folder / "playbook.yaml", {"playbooks": [playbook]})


def plans_of(store: Store, goal_id: str) -> list[PlanRow]:
    """Every plan revision stored for a goal, oldest first."""
    with store.session() as session:
        rows = session.execute(
            select(PlanRow).where(PlanRow.goal_id == goal_id).order_by(PlanRow.revision)
        ).scalars()
        return list(rows)


def only_plan(store: Store, goal_id: str) -> Plan:
    """The goal's one plan revision (fails if there is not exactly one)."""
    rows = plans_of(store, goal_id)
    assert len(rows) == 1, f"expected one plan revision, found {len(rows)}"
    return plan_of(rows[0])


def audit_kinds(store: Store, goal_id: str) -> list[str]:
    """The kinds of the goal's audit entries, in order."""
    return [entry.kind for entry in audit_entries(store, goal_id)]


def audit_entries(store: Store, goal_id: str) -> list[AuditRow]:
    """The goal's audit entries, in order."""
    with store.session() as session:
        rows = session.execute(
            select(AuditRow).where(AuditRow.goal_id == goal_id).order_by(AuditRow.seq)
        ).scalars()
        return list(rows)


def step_runs(store: Store, plan_id: str) -> dict[str, str]:
    """Step id to recorded status, for every step the executor touched."""
    with store.session() as session:
        rows = session.execute(select(StepRunRow).where(StepRunRow.plan_id == plan_id)).scalars()
        return {row.step_id: row.status for row in rows}


def stored_approval(store: Store, plan_id: str) -> PlanApproved:
    """The plan.approved message the gate issued for a plan, rebuilt from the store."""
    with store.session() as session:
        plan = session.get_one(PlanRow, plan_id)
        approval = session.execute(
            select(ApprovalRow).where(ApprovalRow.plan_id == plan_id)
        ).scalar_one()
        return PlanApproved.model_validate(
            {"goal_id": plan.goal_id, "plan": plan.body, "approval": approval.envelope}
        )


def first_envelope(store: Store, routing_key: str, goal_id: str) -> Envelope:
    """The first envelope of this type stored in the outbox for a goal, exactly as published."""
    with store.session() as session:
        rows = session.execute(
            select(OutboxRow).where(OutboxRow.routing_key == routing_key).order_by(OutboxRow.id)
        ).scalars()
        for row in rows:
            if row.headers.get("x-plangate-goal-id") == goal_id:
                return Envelope(row.routing_key, row.body, dict(row.headers))
    raise AssertionError(f"no {routing_key} envelope stored for goal {goal_id}")


def sign_approval(
    signer: Signer,
    plan: Plan,
    *,
    ttl: timedelta = timedelta(minutes=5),
    issued_ago: timedelta = timedelta(0),
) -> PlanApproved:
    """A plan.approved for `plan`, signed by `signer` as a reviewer named `mallory` would be."""
    decision = Decision(
        action="approve", decided_by="mallory", reason="looks fine", policy_version="test"
    )
    approval = signer.approval(plan, decision, ttl)
    if issued_ago:
        approval = approval.model_copy(
            update={
                "issued_at": approval.issued_at - issued_ago,
                "expires_at": approval.expires_at - issued_ago,
            }
        )
    return PlanApproved(goal_id=plan.goal_id, plan=plan, approval=signer.sign(approval))


def next_message(observer: Observer, kind: str, goal_id: str, timeout: float = 5.0) -> Message:
    """The next message of type `kind` for the goal that the observer sees; fail on timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = observer.next(timeout=left)
        if message is None or message.goal_id != goal_id:
            continue
        if getattr(message, "type", None) == kind:
            return message
    raise AssertionError(f"no {kind} for goal {goal_id} within {timeout} s")


def dead_letters(pipeline: Pipeline, count: int = 1, timeout: float = 5.0) -> list[DeadLetter]:
    """Wait until `count` dead letters have arrived; return them all."""
    letters: list[DeadLetter] = []

    def arrived() -> bool:
        letters.extend(pipeline.bus.take_dead_letters())
        return len(letters) >= count

    eventually(arrived, timeout, f"{count} dead letter(s)")
    return letters


def rewind_to_mid_call(store: Store, plan: Plan, step_id: str) -> None:
    """Leave the store as an executor killed during `step_id`'s tool call leaves it: the goal
    running, the step claimed, its lease run out, no result recorded."""
    with store.session() as session:
        session.get_one(GoalRow, plan.goal_id).status = "running"
        row = session.get_one(StepRunRow, (plan.plan_id, step_id))
        row.status, row.output, row.error, row.finished_at = "running", None, None, None
        row.lease_until = utcnow() - timedelta(seconds=1)


def migrate_to(url: str, revision: str) -> Engine:
    """Migrate the database at `url` to `revision` only, as that release's `db upgrade` did."""
    from alembic import command
    from alembic.config import Config

    from plangate.store.engine import make_engine

    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", "plangate.store:migrations")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return engine


def write_a_log_at_0012(url: str) -> None:
    """Migrate an empty database to 0012 and write two audit entries as 0012 wrote them."""
    from sqlalchemy import text

    from plangate.store import audit

    engine = migrate_to(url, "0012")
    prev = audit.GENESIS
    with engine.begin() as connection:
        for seq, kind in enumerate(("goal.submitted", "goal.proposed"), start=1):
            at = f"2026-01-01T00:00:0{seq}+00:00"
            digest = audit.entry_hash(prev, seq, at, "g-old", kind, "planner", {})
            connection.execute(
                text(
                    "INSERT INTO audit_log (seq, at, goal_id, kind, actor, data, prev_hash, hash)"
                    " VALUES (:seq, :at, 'g-old', :kind, 'planner', '{}', :prev, :hash)"
                ),
                {"seq": seq, "at": at, "kind": kind, "prev": prev, "hash": digest},
            )
            prev = digest
        connection.execute(
            text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 2, :h)"), {"h": prev}
        )
    engine.dispose()


def append_after_the_upgrade_and_verify(store: Store) -> None:
    """Append two entries of a new goal to an upgraded 0012 log; both chains must verify."""
    from plangate.store import audit

    with store.session() as session:
        audit.append(session, "goal.submitted", actor="planner", goal_id="g-new")
        audit.append(session, "goal.proposed", actor="planner", goal_id="g-new")
    report = audit.verify(store)
    assert report.ok, report.problem
    assert (report.entries, report.chains) == (4, 2)
    with store.session() as session:
        chains = session.execute(select(AuditRow.chain, AuditRow.chain_seq).order_by(AuditRow.seq))
        assert list(chains) == [("global", 1), ("global", 2), ("g-new", 1), ("g-new", 2)]


@contextmanager
def memory_client(settings: Settings) -> Iterator[Client]:
    """A client on a migrated SQLite store and the memory transport."""
    settings = settings.model_copy(update={"broker_url": "memory://"})
    open_store(settings.resolved_database_url()).close()  # migrated, as `plangate db upgrade`
    with Client(settings) as opened:
        yield opened


@contextmanager
def serving_with_reviewers(
    settings: Settings, *reviewers: Reviewer
) -> Iterator[tuple[str, int, Client]]:
    """Run `plangate serve`'s app on the memory transport with `reviewers`; yield its host,
    its port and its client."""
    from plangate.reviewers import Reviewers
    from plangate.server import create_app
    from tests.fleet import serving_app

    with (
        memory_client(settings) as client,
        serving_app(
            create_app(client.settings, client=client, reviewers=Reviewers(list(reviewers)))
        ) as url,
    ):
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        yield parts.hostname, parts.port, client


def first_consume_failure(bus: Bus, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """Run a planner consume loop on `bus` until it logs its first failure; return that line.

    The bus is closed after.
    """
    consumer = bus.stage_consumer("planner", lambda message, delivery: [])
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run_until_stopped, args=(stop,), daemon=True)
    with caplog.at_level(logging.ERROR, logger="plangate.bus.reconnect"):
        worker.start()
        eventually(lambda: caplog.records, 10, "the loop's first failure")
        stop.set()
        worker.join(10)
    bus.close()
    return caplog.records[0]


def publish_raw(pipeline: Pipeline, routing_key: str, body: bytes, **options: Any) -> None:
    """Publish with kombu directly, as a foreign producer could, around plangate's bus."""
    with pipeline.bus.connection() as connection:
        producer = Producer(connection.channel(), exchange=pipeline.bus.topology.exchange)
        producer.publish(body, routing_key=routing_key, **options)


def publish_goal(pipeline: Pipeline, message: GoalSubmitted, **options: Any) -> None:
    """Publish a goal as a foreign publisher does: JSON on the broker, no client."""
    json_body = {"content_type": "application/json", "content_encoding": "utf-8"}
    publish_raw(pipeline, "goal.submitted", encode_message(message), **json_body, **options)
