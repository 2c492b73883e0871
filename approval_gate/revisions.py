"""A plan's revisions as a reviewer meets them: the steps edited, and what changed.

An edit's steps (without what the review only shows), the revision they make, and a diff of
it against the revision before; whether a held revision still fits the tool catalog, and
whose words its summary are when an edit kept an earlier one's.

An edit is a new revision (a new plan id and hash), validated as any plan is; the review
(`approval_gate.review`) proposes it to the gate, which decides it again.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from plangate.store import PlanRow
from plangate.store.goals import plan_of
from schemas import Catalog, Plan, PlanInvalid, PlanProblem, new_id, validate_plan

# What the review adds to a step for people to read; an edit sends steps back without them.
SHOWN_ONLY = frozenset({"effect", "untrusted_from"})


def editable_steps(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return steps as shown (API, page) as a reviewer edits them: plan fields only, set ones."""
    return [
        {k: v for k, v in step.items() if k not in SHOWN_ONLY and v not in (None, [], {})}
        for step in steps
    ]


def plan_diff(previous: PlanRow | None, plan: PlanRow) -> str:
    """Return a unified diff of two revisions' summary and steps as JSON ("" if no previous)."""
    if previous is None:
        return ""

    def lines(row: PlanRow) -> list[str]:
        body = {"summary": row.body.get("summary", ""), "steps": row.body.get("steps", [])}
        # As written, not \u-escaped: "\ud83d\udea8" in a diff read as nothing a reviewer knew.
        return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False).splitlines(
            keepends=True
        )

    return "".join(
        difflib.unified_diff(
            lines(previous),
            lines(plan),
            fromfile=f"revision {previous.revision}",
            tofile=f"revision {plan.revision}",
        )
    )


def edited_plan(old: PlanRow, steps: list[dict[str, Any]], summary: str | None) -> Plan:
    """Return revision n+1 with the reviewer's steps; PlanInvalid if they are malformed."""
    try:
        return Plan.model_validate(
            {
                "plan_id": new_id(),
                "goal_id": old.goal_id,
                "revision": old.revision + 1,
                "summary": old.body.get("summary", "") if summary is None else summary,
                "steps": steps,
            }
        )
    except ValidationError as exc:
        problems = [
            PlanProblem(
                code="malformed",
                message=f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}",
            )
            for e in exc.errors()
        ]
        raise PlanInvalid(problems) from exc


def catalog_misfit(plan: PlanRow, catalog: Catalog) -> str | None:
    """Say what of a stored revision no longer fits the tool catalog; None if it fits.

    A tool's arguments may change while a plan is held (a new required one): the executor
    validates the plan again, as here, and fails it; an approval of it was wasted. An empty
    catalog (no executor has published one yet) judges nothing.
    """
    if not catalog:
        return None
    try:
        validate_plan(plan_of(plan), catalog)
    except PlanInvalid as invalid:
        said = "; ".join(str(problem) for problem in invalid.problems)
        return (
            f"no longer fits the tool catalog ({said}): approving it would fail when it runs; "
            "edit it or reject it"
        )
    return None
