"""The floor of `bench/pipeline.py`: the baseline's hops plus the least durable work DESIGN.md asks.

What the design asks of every hop, and nothing else, done as cheaply as Python allows: raw
`sqlite3` on one shared file (WAL, synchronous=NORMAL and writers queued on a `flock`, as
plangate's store), no ORM, no tracing, no threads; the checks the design asks for (decoding,
validation, policy, signing and its verification) with the contract's own functions. Per goal:

- each stage decodes what it receives strictly (`schemas.decode_message`) and checks what the
  design makes it check, with the contract's own functions: the planner validates its plan and
  hashes it, the gate validates the plan, lets the policy decide and signs the approval, the
  executor verifies the approval's signature, hashes the plan and validates it;
- the client stores the goal with an audit entry and an outbox row in one transaction,
  publishes, and marks the row sent;
- each stage, in one transaction, reads the goal's state (to spot a redelivery), records its
  effect (plan, decision), moves the goal on, appends a hash-chained audit entry and an outbox
  row; then publishes and acks; rows are marked sent in batches (as plangate does);
- the executor uses the approval once (a unique insert), records each read step's result,
  claims the write step before its call (`INSERT ... ON CONFLICT DO NOTHING`) and records its
  result after, each with an audit entry, tells observers of each step (`step.finished`), and
  ends the goal with its outcome.

The checks run on the bodies plangate sent for its first goal, with this goal's id put in, so
the executor verifies the gate's signature over that first goal's approval: the same work, on
the same bytes (only the comparison of the approval's ids with the plan's is left out: the ids
were swapped in). Each hop handles one message at a time, as the baseline's do: its CPU per
goal and its latency are the floor's; its goals/s is bounded, like every side's, by the CPU of
the machine. Whatever plangate spends beyond all this is its own; below it no implementation
of the design can go (short of batching goals into shared transactions).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from approval_gate.policy import load_policy
from plangate.config import Settings
from plangate.signing import Signer
from plangate.signing_keys import load_trusted_keys
from plangate.tools import load_tools
from schemas import (
    GoalSubmitted,
    PlanApproved,
    PlanProposed,
    decode_message,
    plan_hash,
    validate_plan,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS goals (id TEXT PRIMARY KEY, status TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY, goal_id TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS approval_uses (approval_id TEXT PRIMARY KEY, goal_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS steps (
    goal_id TEXT NOT NULL, step_id TEXT NOT NULL, status TEXT NOT NULL, output TEXT,
    PRIMARY KEY (goal_id, step_id));
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, goal_id TEXT, kind TEXT NOT NULL, at TEXT NOT NULL,
    hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, routing_key TEXT NOT NULL, body BLOB NOT NULL,
    created_at TEXT NOT NULL, sent_at TEXT);
"""

# The seed example's steps, in order: (step id, is it a write).
STEPS = (("count", False), ("sla", False), ("notify", True))
MARK_SENT_EVERY = 0.5  # seconds, as plangate's outbox marker

Send = Callable[[str, bytes], None]  # publish a body under a routing key


def now() -> str:
    return datetime.now(UTC).isoformat()


class Database(Protocol):
    """What the floor asks of a connection: sqlite3's `execute`, with its `?` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any: ...


class FloorStore:
    """One connection to the shared SQLite file; `tx()` holds its write lock from the start."""

    db: Database

    def __init__(self, path: str) -> None:
        self._sqlite = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db = self._sqlite
        # Writers queue on a kernel lock, as plangate's do, not on SQLite's sleep-and-retry.
        self._lock = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._unsent: list[int] = []
        self._marked = time.monotonic()

    def close(self) -> None:
        self._sqlite.close()
        os.close(self._lock)

    def create_schema(self) -> None:
        self._sqlite.executescript(SCHEMA)

    @contextmanager
    def tx(self) -> Iterator[Database]:
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def audit(self, goal_id: str, kind: str) -> None:
        """Append a hash-chained entry (in the caller's transaction)."""
        last = self._last_entry(goal_id)
        at = now()
        digest = hashlib.sha256(f"{last[0] if last else ''}|{goal_id}|{kind}|{at}".encode())
        self.db.execute(
            "INSERT INTO audit (goal_id, kind, at, hash) VALUES (?, ?, ?, ?)",
            (goal_id, kind, at, digest.hexdigest()),
        )

    def _last_entry(self, goal_id: str) -> Any:
        """The chain's last entry: one chain for every goal (SQLite's writes take turns anyway)."""
        return self.db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()

    def outbox(self, routing_key: str, body: bytes) -> int:
        """Queue a message (in the caller's transaction); return its row id."""
        cursor = self.db.execute(
            "INSERT INTO outbox (routing_key, body, created_at) VALUES (?, ?, ?)",
            (routing_key, body, now()),
        )
        return int(cursor.lastrowid or 0)

    def sent(self, row_id: int, batch: bool = True) -> None:
        """Note a row published; mark the noted rows sent every MARK_SENT_EVERY s."""
        self._unsent.append(row_id)
        if batch and time.monotonic() - self._marked < MARK_SENT_EVERY:
            return
        with self.tx() as db:
            marks = ",".join("?" * len(self._unsent))
            db.execute(
                f"UPDATE outbox SET sent_at = ? WHERE id IN ({marks})", [now(), *self._unsent]
            )
        self._unsent.clear()
        self._marked = time.monotonic()

    def submit(self, goal_id: str, routing_key: str, body: bytes, send: Send) -> None:
        """What a client does: store the goal and its message, publish, mark it sent."""
        with self.tx() as db:
            db.execute("INSERT INTO goals VALUES (?, 'submitted', ?)", (goal_id, now()))
            self.audit(goal_id, "goal.submitted")
            row = self.outbox(routing_key, body)
        send(routing_key, body)
        self.sent(row, batch=False)


# The floor's tables on PostgreSQL, in a schema of their own beside plangate's tables.
POSTGRES_SCHEMA = """
DROP SCHEMA IF EXISTS floor CASCADE;
CREATE SCHEMA floor;
CREATE TABLE goals (id TEXT PRIMARY KEY, status TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE records (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, goal_id TEXT NOT NULL,
    kind TEXT NOT NULL, body BYTEA NOT NULL);
CREATE TABLE approval_uses (approval_id TEXT PRIMARY KEY, goal_id TEXT NOT NULL);
CREATE TABLE steps (
    goal_id TEXT NOT NULL, step_id TEXT NOT NULL, status TEXT NOT NULL, output TEXT,
    PRIMARY KEY (goal_id, step_id));
CREATE TABLE audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, goal_id TEXT, kind TEXT NOT NULL,
    at TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX audit_chain ON audit (goal_id, seq);
CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, routing_key TEXT NOT NULL,
    body BYTEA NOT NULL, created_at TEXT NOT NULL, sent_at TEXT);
"""


class QmarkConnection:
    """A psycopg connection taking sqlite3's `?` placeholders: the floor's SQL is written once."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self.connection.execute(sql.replace("?", "%s"), parameters)


class PostgresFloorStore(FloorStore):
    """The floor on PostgreSQL (psycopg, no ORM): each commit waits for its fsync, as plangate's.

    No lock every writer shares: the audit chain is one per goal, as plangate's is on PostgreSQL
    (a goal's stages act one after another, so its chain needs no lock of the floor's own).
    """

    def __init__(self, url: str) -> None:
        import psycopg  # only this side needs the driver

        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._postgres = psycopg.connect(conninfo, autocommit=True, options="-c search_path=floor")
        self.db = QmarkConnection(self._postgres)
        self._unsent: list[int] = []
        self._marked = time.monotonic()

    def close(self) -> None:
        self._postgres.close()

    def create_schema(self) -> None:
        self.db.execute(POSTGRES_SCHEMA)

    @contextmanager
    def tx(self) -> Iterator[Database]:
        with self._postgres.transaction():
            yield self.db

    def _last_entry(self, goal_id: str) -> Any:
        """The last entry of the goal's own chain."""
        return self.db.execute(
            "SELECT hash FROM audit WHERE goal_id = ? ORDER BY seq DESC LIMIT 1", (goal_id,)
        ).fetchone()

    def outbox(self, routing_key: str, body: bytes) -> int:
        """Queue a message (in the caller's transaction); return its row id."""
        (row_id,) = self.db.execute(
            "INSERT INTO outbox (routing_key, body, created_at) VALUES (?, ?, ?) RETURNING id",
            (routing_key, body, now()),
        ).fetchone()
        return int(row_id)


def open_floor_store(locator: str) -> FloorStore:
    """Open the floor's store: a PostgreSQL URL, or else the path of a SQLite file."""
    if locator.startswith("postgresql"):
        return PostgresFloorStore(locator)
    return FloorStore(locator)


class ContractChecks:
    """What the design makes each stage check, done with the contract's own functions."""

    def __init__(self) -> None:
        settings = Settings()  # the bench gives the hops plangate's environment
        self.catalog = load_tools(settings.tool_modules()).catalog()
        self.policy = load_policy(settings)
        self.signer = Signer(Ed25519PrivateKey.generate())
        self.trusted = load_trusted_keys(settings)  # the key plangate's gate signed with

    def check(self, in_key: str, received: bytes, headers: dict[str, str], sent: bytes) -> None:
        """Check one hop's message the way its stage must; raise if it does not hold."""
        message = decode_message(received, "application/json", "utf-8", headers)
        if isinstance(message, GoalSubmitted):  # the planner checks the plan it proposes
            proposed = decode_message(sent, "application/json", "utf-8", headers)
            assert isinstance(proposed, PlanProposed)
            validate_plan(proposed.plan, self.catalog)
            plan_hash(proposed.plan)
        elif isinstance(message, PlanProposed):
            validate_plan(message.plan, self.catalog)
            decision = self.policy.decide(message.plan, self.catalog)
            approval = self.signer.approval(message.plan, decision, timedelta(hours=1))
            self.signer.sign(approval)
        elif isinstance(message, PlanApproved):
            self.trusted.verify(message.approval, allow_expired=True)
            plan_hash(message.plan)
            validate_plan(message.plan, self.catalog)
        else:
            raise ValueError(f"a {in_key} hop got {type(message).__name__}")


class DurableStage:
    """One stage's checks and durable work around the baseline hop's publish."""

    def __init__(self, locator: str, in_key: str) -> None:
        self.store = open_floor_store(locator)
        self.in_key = in_key
        self.checks = ContractChecks()

    def handle(
        self,
        goal_id: str,
        received: tuple[bytes, dict[str, str]],
        out: tuple[str, bytes],
        send: Send,
    ) -> None:
        """Do this stage's work for one message; `send` publishes (the caller then acks)."""
        out_key, body = out
        self.checks.check(self.in_key, *received, body)
        if self.in_key == "plan.approved":
            self._run(goal_id, send)
            self._move_on(goal_id, "completed", out_key, body, send, record=False)
        else:
            status = {"goal.submitted": "proposed", "plan.proposed": "approved"}[self.in_key]
            self._move_on(goal_id, status, out_key, body, send, record=True)

    def _move_on(
        self, goal_id: str, status: str, out_key: str, body: bytes, send: Send, *, record: bool
    ) -> None:
        """Record the effect, move the goal on and queue the next message; publish it."""
        store = self.store
        with store.tx() as db:
            db.execute("SELECT status FROM goals WHERE id = ?", (goal_id,)).fetchone()
            if record:  # the plan, the decision
                db.execute(
                    "INSERT INTO records (goal_id, kind, body) VALUES (?, ?, ?)",
                    (goal_id, out_key, body),
                )
            db.execute("UPDATE goals SET status = ?, at = ? WHERE id = ?", (status, now(), goal_id))
            store.audit(goal_id, f"goal.{status}")
            row = store.outbox(out_key, body)
        send(out_key, body)
        store.sent(row)

    def _run(self, goal_id: str, send: Send) -> None:
        store = self.store
        with store.tx() as db:
            db.execute("SELECT status FROM goals WHERE id = ?", (goal_id,)).fetchone()
            db.execute(
                "INSERT INTO approval_uses VALUES (?, ?) ON CONFLICT DO NOTHING",
                (f"approval-{goal_id}", goal_id),
            )
            db.execute("UPDATE goals SET status = 'running', at = ? WHERE id = ?", (now(), goal_id))
            store.audit(goal_id, "goal.running")
        for step_id, write in STEPS:
            if write:  # claimed before the call, so that it happens once
                with store.tx() as db:
                    db.execute(
                        "INSERT INTO steps VALUES (?, ?, 'running', NULL) ON CONFLICT DO NOTHING",
                        (goal_id, step_id),
                    )
            output = json.dumps({"ok": True})  # the instant tool's answer
            with store.tx() as db:
                db.execute(
                    "INSERT INTO steps VALUES (?, ?, 'succeeded', ?) "
                    "ON CONFLICT (goal_id, step_id) "
                    "DO UPDATE SET status = 'succeeded', output = excluded.output",
                    (goal_id, step_id, output),
                )
                store.audit(goal_id, f"step.{step_id}")
            event = {"goal_id": goal_id, "step_id": step_id, "status": "succeeded"}
            send("step.finished", json.dumps(event).encode())
