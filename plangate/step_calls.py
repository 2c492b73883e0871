"""What a step is called with, as its audit entries record it: its arguments and its key.

Here, not in the executor, which calls the steps: a gate settling a write, and `status`, make
them again, and neither may load the executor's code (it brings CEL with it).

What a write of unknown outcome was called with: its arguments and its idempotency key.

A person settling such a write asks the other system whether it happened (did payment X go
out?), and the other system knows the call by its key and its arguments. The executor that
called it died with them in memory, so they are made again as it made them: the plan's
arguments with its references filled from the outputs recorded, and the key of the goal, the
step and those arguments. The step's `step.unknown` and `step.settled` entries record them, as
a finished step's entry does, and `plangate review unsettled` shows them.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.store import StepRunRow
from plangate.store.audit_records import output_digest
from schemas import Plan, Step
from schemas.hashing import canonical_json, sha256_hex
from schemas.references import UnresolvedReference, resolve


def call_of(
    session: Session, plan: Plan, step_id: str, recorded_key: str | None = None
) -> dict[str, Any]:
    """Return what a write step of `plan` is called with: `args` (or `args_sha256`) and its key.

    The key is `recorded_key`, the one its claim recorded, when it has one: made again here it
    is this release's formula's, which the release that called it may not have used. Empty if
    the plan has no such step, or an output its arguments read is not recorded (the run would
    have failed the step before calling it).
    """
    try:
        step = plan.step(step_id)
    except KeyError:
        return {}
    args = args_of(session, plan, step)
    if args is None:
        return {}
    return called_with(args, recorded_key or idempotency_key(plan.goal_id, step, args))


def args_of(session: Session, plan: Plan, step: Step) -> dict[str, Any] | None:
    """Return `step`'s arguments with its references filled from the outputs recorded.

    None if an output they read is not recorded.
    """
    recorded = session.execute(
        select(StepRunRow.step_id, StepRunRow.output).where(
            StepRunRow.plan_id == plan.plan_id, StepRunRow.status == "succeeded"
        )
    )
    outputs = {step_id: output for step_id, output in recorded}
    try:
        args: dict[str, Any] = resolve(dict(step.args), outputs)
    except UnresolvedReference:
        return None
    return args


def idempotency_key(goal_id: str, step: Step, args: dict[str, Any]) -> str:
    """Return the key a write passes downstream: one per goal, step and the `args` it gets."""
    # Not of the plan's hash: a retry's revision (a new hash) redid a write under a new key.
    return key_of([goal_id, step.id, step.tool, _whole_numbers_as_integers(args)])


def key_of(planned: list[Any]) -> str:
    """Return the key of what a call is keyed by: sorted-key compact JSON, hashed."""
    return sha256_hex(json.dumps(planned, sort_keys=True, separators=(",", ":")).encode())[:40]


def _whole_numbers_as_integers(value: Any) -> Any:
    """Return `value` with each float that is a whole number as the integer it equals.

    A read's output of 10.0 is stored as the log's canonical JSON writes it (10), and read back
    so: the key made again for a person (and for the call made again once settled) was of 10,
    the first call's of 10.0, and the other system, asked by the one, knew nothing of the
    other. Past 2**53 a float is no exact integer, and is left as it is.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers_as_integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_integers(v) for v in value]
    return value


ARGS_KEPT = 16 * 1024  # bytes of canonical JSON of a step's arguments kept in its audit entry
ARGS_DEPTH = 32  # levels of nesting kept (the log's reader refuses far deeper data)


def called_with(args: dict[str, Any], key: str | None) -> dict[str, Any]:
    """Return what a step's audit entry says of its call: its arguments, a write's key.

    The arguments as the entry's hash will read them (RFC 8785); ones it cannot hold (an
    integer past 2**53 from a read's output, more than `ARGS_KEPT` bytes, deeper than
    `ARGS_DEPTH`) are named by their digest alone, computed as an output's is (sorted-key
    JSON): written as they are, the entry could not be hashed and the step's end was lost.
    """
    try:
        fits = _depth(args) <= ARGS_DEPTH and len(canonical_json(args)) <= ARGS_KEPT
    except (ValueError, TypeError):  # rfc8785's domain errors are ValueErrors
        fits = False
    said: dict[str, Any] = {"args": args} if fits else {"args_sha256": output_digest(args)}
    if key is not None:
        said["idempotency_key"] = key
    return said


def _depth(value: Any, levels: int = 0) -> int:
    if levels > ARGS_DEPTH:
        return levels
    if isinstance(value, dict):
        return max((_depth(v, levels + 1) for v in value.values()), default=levels + 1)
    if isinstance(value, list):
        return max((_depth(v, levels + 1) for v in value), default=levels + 1)
    return levels
