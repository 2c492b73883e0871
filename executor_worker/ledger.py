"""Step claims and checkpoints in the store, so a step's effect happens once per plan.

A claim is an `INSERT ... ON CONFLICT DO NOTHING` with a lease. A step found finished is not
run again; one found running past its lease is re-run only if its tool is idempotent, and is
otherwise marked `unknown` for a person to settle: never run twice silently.

A read takes no claim before its call: it has no effect to protect, and a transaction fewer
per read shows on every goal. A read recorded before the run started is reused, not called
again. Otherwise its result is recorded only if no run of the plan recorded one first, and the
first recorded result is the one every run goes on with: two runs of one plan (a redelivery
while it runs) cannot decide a `when` or a write's arguments differently. A run records the
reads that answered together, in one transaction, before any step that reads them starts
(`PlanRun._start_wave`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Table, bindparam, literal, select, update
from sqlalchemy.orm import Session

from executor_worker.claim_held import held_elsewhere
from executor_worker.step_entries import ended_entry
from plangate.cancellation import cancelled_in, is_cancelled
from plangate.errors import Retry
from plangate.step_calls import call_of, called_with
from plangate.store import StepRunRow, Store, audit
from plangate.store.audit_records import output_digest
from plangate.store.claims import insert_if_absent
from plangate.store.hot_statements import HotStatement
from plangate.store.outage_retry import riding_out_outages
from plangate.store.rows import insert_row
from schemas import Plan, Step, ToolSpec, utcnow

ClaimKind = Literal["run", "done", "unknown"]
# A read's answer, as its call returned it: the step, its status, its output, its error, and
# how long the call took in ms.
ReadAnswer = tuple[Step, str, Any, str | None, float]


@dataclass(frozen=True)
class Claim:
    """What to do with a step: run it (attempt n), or reuse what is already recorded."""

    kind: ClaimKind
    attempt: int = 1
    status: str | None = None
    output: Any = None
    error: str | None = None
    key: str | None = None  # a write's idempotency key, as its claim recorded it


# Outcomes that never change once recorded; an `unknown` step may be settled by a person at any
# time, so it is always read afresh.
_FINAL = ("succeeded", "failed", "skipped")


# Built once, and run as plain statements: each goal's run reads its records and records each
# step, and the ORM's query and unit of work took several times what these take.
_STEPS = cast(Table, StepRunRow.__table__)
# The outcomes as values of their own (not one list spread at each run), so the statement is
# compiled once and can run as a hot statement.
_RECORDED = HotStatement(
    select(_STEPS.c.step_id, _STEPS.c.attempt, _STEPS.c.status, _STEPS.c.output, _STEPS.c.error)
    .where(_STEPS.c.plan_id == bindparam("plan_id"))
    .where(_STEPS.c.status.in_([literal(status) for status in _FINAL]))
)
# Named apart from the columns: an UPDATE reserves the columns' own names for its SET clause.
_STEP = (_STEPS.c.plan_id == bindparam("of_plan")) & (_STEPS.c.step_id == bindparam("of_step"))
_LOCK_RECORD = HotStatement(
    select(_STEPS.c.status, _STEPS.c.attempt, _STEPS.c.output, _STEPS.c.error)
    .where(_STEP)
    .with_for_update()
)
_FINISH = HotStatement(
    update(_STEPS)
    .where(_STEP)
    .values(
        status=bindparam("new_status"),
        output=bindparam("new_output", type_=_STEPS.c.output.type),
        error=bindparam("new_error"),
        finished_at=bindparam("now", type_=_STEPS.c.finished_at.type),
        lease_until=None,
    )
)


def recorded_steps(session: Session, plan_id: str) -> dict[str, Claim]:
    """Return the steps of a plan with a final outcome, by id, as a run finds them at its start."""
    rows = _RECORDED.rows(session, {"plan_id": plan_id})
    return {
        step_id: Claim("done", attempt, status, output, error)
        for step_id, attempt, status, output, error in rows
    }


class StepLedger:
    """The step records of one plan."""

    def __init__(
        self,
        store: Store,
        plan: Plan,
        lease: timedelta = timedelta(minutes=5),
        recorded: Mapping[str, Claim] | None = None,
    ) -> None:
        self._store = store
        self._plan = plan
        self._lease = lease
        self._recorded = dict(recorded or {})
        # When each claim this run made runs out, on this process's clock: a result in hand
        # is worth waiting out a database outage for only until then (another executor may
        # take the step over after).
        self._lease_ends: dict[str, float] = {}
        # What each step this run called was called with, for its end's audit entry.
        self._calls: dict[str, dict[str, Any]] = {}

    def transaction(self) -> AbstractContextManager[Session]:
        """Open one transaction for several of the calls below (each takes `session=`)."""
        return self._store.session()

    def goal_cancelled(self, *, session: Session | None = None) -> bool:
        """Return whether the plan's goal was cancelled since the run started."""
        if session is not None:
            return cancelled_in(session, self._plan.goal_id)
        return is_cancelled(self._store, self._plan.goal_id)

    def calling(self, step: Step, args: dict[str, Any], key: str | None) -> None:
        """Note the arguments (references filled in) a step is called with, and a write's key.

        Its end's audit entry holds them: an auditor reads what a write ran with, not only
        the plan's `${total}`. Arguments past `ARGS_KEPT` bytes of JSON are named by their
        digest alone (they come from outputs the records hold).
        """
        self._calls[step.id] = called_with(args, key)

    def recorded(self, step: Step) -> Claim | None:
        """Return the step's record from before this run started, if it had finished."""
        return self._recorded.get(step.id)

    def claim(
        self, step: Step, spec: ToolSpec, key: str, *, session: Session | None = None
    ) -> Claim:
        """Claim a step for this executor, or say why it must not run now.

        `key` is the idempotency key this release makes for the call; the claim records it,
        and a claim taken over keeps the one recorded first (`Claim.key`): the call made
        again after a crash, or a person's "did not happen", passes the key the other system
        knows. With `session`, in the caller's transaction (the one that starts the wave).
        """
        if session is None:
            with self._store.session() as own:
                return self.claim(step, spec, key, session=own)
        now = utcnow()
        won = insert_if_absent(
            session,
            StepRunRow,
            {
                "plan_id": self._plan.plan_id,
                "step_id": step.id,
                "goal_id": self._plan.goal_id,
                "tool": step.tool,
                "status": "running",
                "attempt": 1,
                "lease_until": now + self._lease,
                "started_at": now,
                "idempotency_key": key,
            },
        )
        if won:
            return self._claimed(step, Claim("run", key=key))
        # Locked: a late `record` of the run whose lease ran out commits first or waits.
        row = self._locked(session, step)
        if row is None:  # removed just now (by a release that deleted a "did not happen")
            raise Retry(f"step {step.id!r} was settled meanwhile", delay=1.0)
        if row.status == "pending":  # a person found it did not happen: it is called again
            return self._take_over(session, step, row, key)
        if row.status != "running":
            kind: ClaimKind = "unknown" if row.status == "unknown" else "done"
            return Claim(kind, row.attempt, row.status, row.output, row.error)
        lease_until = row.lease_until
        if lease_until is not None and lease_until > now:
            raise held_elsewhere(step.id, lease_until, now)
        if not spec.idempotent:
            row.status, row.finished_at = "unknown", now
            # Or it lived, but could not record the result within the lease (a database
            # outage longer than the lease): from the row alone, the two look the same.
            row.error = "the executor calling it died mid-call, or could not record its result"
            # Said in the log as every step's end is: it read as claimed and never ended. With
            # what it was called with: a person asks the other system by its key and arguments.
            said: dict[str, Any] = {"plan_id": self._plan.plan_id, "step_id": step.id}
            said.update(
                tool=step.tool, **call_of(session, self._plan, step.id, row.idempotency_key)
            )
            self._audit(session, "step.unknown", ended_entry(said, None, row.error))
            return Claim("unknown", row.attempt, "unknown", None, row.error)
        return self._take_over(session, step, row, key)

    def _take_over(self, session: Session, step: Step, row: StepRunRow, key: str) -> Claim:
        """Claim a step whose row is left `running` past its lease, or settled `pending`.

        The key recorded first stays: the call made again is the same call to the other
        system. A row claimed before 0015 has none, and records this release's.
        """
        now = utcnow()
        key = row.idempotency_key or key
        # Read before the UPDATE: the ORM then refreshes `row` to the new attempt.
        attempt = row.attempt + 1
        taken = session.execute(
            update(StepRunRow)
            .where(
                StepRunRow.plan_id == self._plan.plan_id,
                StepRunRow.step_id == step.id,
                StepRunRow.attempt == row.attempt,
                StepRunRow.status == row.status,
            )
            .values(
                status="running",
                attempt=attempt,
                lease_until=now + self._lease,
                started_at=now,
                finished_at=None,
                error=None,
                idempotency_key=key,
            )
        )
        if getattr(taken, "rowcount", 0) != 1:
            raise Retry(f"step {step.id!r} was taken over by another executor", delay=5.0)
        return self._claimed(step, Claim("run", attempt, key=key))

    def _claimed(self, step: Step, claim: Claim) -> Claim:
        self._lease_ends[step.id] = time.monotonic() + self._lease.total_seconds()
        return claim

    def lease_left(self, step: Step) -> float:
        """Return the seconds left of this run's claim on `step` (the whole lease if unknown)."""
        end = self._lease_ends.get(step.id)
        if end is None:
            return self._lease.total_seconds()
        return max(0.0, end - time.monotonic())

    def record_read(
        self, step: Step, status: str, output: Any, error: str | None, duration_ms: float = 0.0
    ) -> Claim:
        """Record a read's result unless one is recorded already; return the result that stands."""
        return self.record_reads([(step, status, output, error, duration_ms)])[step.id]

    def record_reads(
        self, answers: Sequence[ReadAnswer], *, session: Session | None = None
    ) -> dict[str, Claim]:
        """Record reads' results in one transaction; return the results that stand, by step id.

        Each is recorded unless one is recorded already (another run's, which then stands).
        With `session`, in the caller's transaction.
        """
        if session is None:
            with self._store.session() as own:
                return self.record_reads(answers, session=own)
        now = utcnow()
        return {
            step.id: self._record_read(session, now, step, status, output, error, took)
            for step, status, output, error, took in answers
        }

    def _record_read(
        self,
        session: Session,
        now: datetime,
        step: Step,
        status: str,
        output: Any,
        error: str | None,
        duration_ms: float,
    ) -> Claim:
        key = {"plan_id": self._plan.plan_id, "step_id": step.id, "tool": step.tool}
        # A read is recorded once it has answered (no claim first, unlike a write), so its
        # start is what its measured duration says: `status` shows how long it took.
        started = now - timedelta(milliseconds=duration_ms)
        first = insert_if_absent(
            session,
            StepRunRow,
            {
                **key,
                "goal_id": self._plan.goal_id,
                "status": status,
                "attempt": 1,
                "output": output,
                "error": error,
                "started_at": started,
                "finished_at": now,
            },
        )
        if not first:
            row = self._locked(session, step)
            if row is None:  # a person's "did not happen" removed it just now
                raise Retry(f"step {step.id!r} was settled meanwhile", delay=1.0)
            if row.status != "running":
                return Claim("done", row.attempt, row.status, row.output, row.error)
            # Claimed by an executor of an older version. Its result will be recorded over
            # this one, so this run must not go on with its own: wait for that one.
            if row.lease_until is not None and row.lease_until > now:
                raise held_elsewhere(step.id, row.lease_until, now)
            _finish(row, status, output, error, now)
        said = {**key, **self._calls.get(step.id, {})}
        self._audit(session, f"step.{status}", ended_entry(said, output, error))
        return Claim("done", 1, status, output, error)

    def record(
        self,
        step: Step,
        status: str,
        output: Any,
        error: str | None,
        *,
        attempt: int | None = None,
        session: Session | None = None,
    ) -> None:
        """Store a step's final status and output, and audit it, in one transaction.

        `attempt` is the claim the result comes from. A result that comes back after the step
        was marked `unknown` (its lease ran out; a person is asked), settled, or taken over is
        audited as late and replaces nothing: the person, or the other claim, decides. Recorded
        again (its commit's answer lost), it is not audited twice. A step settled without a
        call (no `attempt`) is recorded once; a later walk of the plan finds it already there.
        With `session`, in the caller's transaction (the run's end).
        """
        if session is None:

            def write() -> None:
                with self._store.session() as own:
                    self.record(step, status, output, error, attempt=attempt, session=own)

            # A called write's result is in hand: kept through a database restart, within what
            # is left of its claim's lease (dropped, the step waited out the lease and was
            # called again).
            within = self.lease_left(step) if attempt is not None else None
            what = f"step {step.id!r}'s result ({status}) of plan {self._plan.plan_id}"
            riding_out_outages(self._store, write, within=within, what=what)
            return
        now = utcnow()
        key = {"plan_id": self._plan.plan_id, "step_id": step.id, "tool": step.tool}
        ids = {"of_plan": self._plan.plan_id, "of_step": step.id}
        locked = _LOCK_RECORD.first(session, ids)
        current = locked[0] if locked is not None else None
        if attempt is not None and (locked is None or (current, locked[1]) != ("running", attempt)):
            # Not this claim's to finish: marked `unknown` for a person (its lease ran out),
            # settled (as not happened, its row gone), or taken over by another executor. Or
            # this very result, committed by a try whose answer the connection lost: nothing
            # more to say then.
            if locked is None or not _holds(locked, status, attempt, output, error):
                late = {**key, "status": status, "attempt": attempt, "error": error}
                settled = current in (None, "pending")  # its row: deleted before 0015
                late["recorded"] = "settled as not happened" if settled else current
                self._audit(session, "step.late_result", late)
            return
        if current is not None and attempt is None:
            return
        if current is None:
            row = {**key, "goal_id": self._plan.goal_id, "started_at": now, "lease_until": None}
            row.update(status=status, output=output, error=error, finished_at=now)
            insert_row(session, StepRunRow, row)
        else:
            finished = {"new_status": status, "new_output": output, "new_error": error}
            _FINISH.rows(session, {**ids, **finished, "now": now})
        said = {**key, **self._calls.get(step.id, {})}
        self._audit(session, f"step.{status}", ended_entry(said, output, error))

    def _locked(self, session: Session, step: Step) -> StepRunRow | None:
        """Return the step's row, locked until the transaction ends (None if it has none)."""
        return session.execute(
            select(StepRunRow)
            .where(StepRunRow.plan_id == self._plan.plan_id, StepRunRow.step_id == step.id)
            .with_for_update()
        ).scalar_one_or_none()

    def _audit(self, session: Session, kind: str, data: dict[str, Any]) -> None:
        audit.append(session, kind, actor="executor", goal_id=self._plan.goal_id, data=data)


def _holds(
    recorded: Sequence[Any], status: str, attempt: int, output: Any, error: str | None
) -> bool:
    """Say whether a step's row (status, attempt, output, error) holds this very result."""
    if (recorded[0], recorded[1], recorded[3]) != (status, attempt, error):
        return False
    return output_digest(recorded[2]) == output_digest(output)


def _finish(row: StepRunRow, status: str, output: Any, error: str | None, now: datetime) -> None:
    row.status, row.output, row.error = status, output, error
    row.finished_at, row.lease_until = now, None
