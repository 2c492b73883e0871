"""What an audit export carries beside its entries: the plans and the steps' results.

The entries record digests: a plan by its hash, a step's output by `output_sha256`. So an
export alone could tell an auditor who approved which plan hash, but not which tool calls with
which arguments it held, nor what each returned: that was only in the live store. With
`--records`, `plangate audit export` writes `FILE.records.jsonl` beside the export: each plan
revision's body (its steps, their arguments as planned) and each step's result (status,
output, error) of the goals exported. The signed manifest names the file's SHA-256, and an
auditor's check (`plangate audit verify --export FILE`) holds every record to the entry that
hashed it: a plan body must hash to a plan hash an entry recorded, a step's output to the
digest its last entry recorded. Outputs are as stored: redacted of the secrets plangate knew.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from plangate.store import PlanRow, StepRunRow, Store
from plangate.store.audit_recorded import Recorded, shown_as_recorded
from plangate.store.audit_records import output_digest
from schemas import Plan, plan_hash

RECORDS_SUFFIX = ".records.jsonl"
_BATCH = 500  # goals read per statement (well under every database's bound variables)


def records_path(export: Path) -> Path:
    """Return where an export's records are written: next to it."""
    return export.with_name(export.name + RECORDS_SUFFIX)


def write_records(store: Store, recorded: Mapping[str, Recorded], target: Path) -> int:
    """Write the plans and step results the exported entries vouch for; return how many.

    `recorded`: what the entries say, by goal. A plan is written if an entry recorded its
    hash; a step if its last exported entry ended it as its row still says (a step that moved
    on after the export's last entry is left out: no entry of the export vouches for it).
    """
    written = 0
    # Only its owner may read it: plans, arguments and outputs, as the store holds them.
    with open(target, "w", encoding="utf-8", opener=lambda n, f: os.open(n, f, 0o600)) as stream:
        for record in _records(store, sorted(recorded)):
            if _vouched(record, recorded[record["goal_id"]]):
                stream.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
                written += 1
    return written


def read_entry(recorded: dict[str, Recorded], entry: Mapping[str, Any]) -> None:
    """Take one exported entry into what the entries say of its goal."""
    data = entry.get("data")
    fields = data if isinstance(data, dict) else {}
    goal = recorded.setdefault(str(entry.get("goal_id")), Recorded())
    goal.read(str(entry["kind"]), str(entry["actor"]), fields)


def _vouched(record: Mapping[str, Any], goal: Recorded) -> bool:
    if record["record"] == "plan":
        return bool(goal.plans.get(record["plan_id"]) == record["plan_hash"])
    return _step_problem(record, goal.steps) is None


def _records(store: Store, goal_ids: list[str]) -> Iterator[dict[str, Any]]:
    for start in range(0, len(goal_ids), _BATCH):
        batch = goal_ids[start : start + _BATCH]
        with store.reading() as session:
            plans = session.execute(
                select(PlanRow)
                .where(PlanRow.goal_id.in_(batch))
                .order_by(PlanRow.goal_id, PlanRow.revision)
            ).scalars()
            for plan in plans:
                yield {
                    "record": "plan",
                    "goal_id": plan.goal_id,
                    "plan_id": plan.plan_id,
                    "revision": plan.revision,
                    "planner": plan.planner,
                    "plan_hash": plan.plan_hash,
                    "body": plan.body,
                }
            steps = session.execute(
                select(StepRunRow)
                .where(StepRunRow.goal_id.in_(batch))
                .order_by(StepRunRow.goal_id, StepRunRow.plan_id, StepRunRow.step_id)
            ).scalars()
            for step in steps:
                yield {
                    "record": "step",
                    "goal_id": step.goal_id,
                    "plan_id": step.plan_id,
                    "step_id": step.step_id,
                    "tool": step.tool,
                    "status": step.status,
                    "output": step.output,
                    "error": step.error,
                    "output_sha256": output_digest(step.output),
                }


def records_problem(entries: Sequence[Mapping[str, Any]], records: Path) -> str | None:
    """Return the first record that no entry of the export vouches for, or None.

    A plan's body must hash to its plan hash, which an entry recorded; a step's tool, status
    and output must be what its last entry recorded, read as `audit verify` reads the log.
    """
    by_goal: dict[str, Recorded] = {}
    for entry in entries:
        if entry.get("goal_id"):
            read_entry(by_goal, entry)
    hashes = {digest for r in by_goal.values() for digest in r.plans.values()}
    ends = {step: end for r in by_goal.values() for step, end in r.steps.items()}
    with records.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            record = json.loads(line)
            problem = _plan_problem(record, hashes) or _step_problem(record, ends)
            if problem is not None:
                return f"record {number} of {records.name} ({problem})"
    return None


def _plan_problem(record: Mapping[str, Any], hashes: Collection[object]) -> str | None:
    if record.get("record") != "plan":
        return None
    where = f"plan {record.get('plan_id')}"
    try:
        computed = plan_hash(Plan.model_validate(record.get("body")))
    except ValidationError:
        return f"{where}: its body is not a plan"
    if computed != record.get("plan_hash"):
        return f"{where}: its body does not hash to its plan hash"
    if computed not in hashes:
        return f"{where}: no entry of the export records this plan hash"
    return None


def _step_problem(
    record: Mapping[str, Any], ends: Mapping[tuple[str, str], Mapping[str, Any]]
) -> str | None:
    if record.get("record") != "step":
        return None
    where = f"step {record.get('step_id')} of plan {record.get('plan_id')}"
    entry = ends.get((str(record.get("plan_id")), str(record.get("step_id"))))
    if entry is None:  # a result is written with its entry: one without is not plangate's
        return f"{where}: no entry of the export records it"
    if (record.get("tool"), record.get("status")) != (entry.get("tool"), entry.get("status")):
        return f"{where}: its tool or status is not what its entry recorded"
    digest = entry.get("output_sha256")
    if digest is not None and digest != output_digest(record.get("output")):
        return f"{where}: its output is not the one its entry recorded"
    if "error" in entry and not shown_as_recorded(record.get("error"), entry["error"]):
        return f"{where}: its error is not the one its entry recorded"
    return None
