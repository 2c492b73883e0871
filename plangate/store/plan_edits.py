"""Who edited a revision and why (its `plan.edited` entry), and whose words its summary is.

A reviewer's edit is a new revision planned by `edit:<reviewer>`; their comment is kept with
the edit in the audit log (redacted, as every entry). The review and `status` show it beside
the revision, so that whoever decides the edit reads why it was made.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.store.models import EDIT_PREFIX, AuditRow, PlanRow


@dataclass(frozen=True)
class PlanEdit:
    """A revision a reviewer made: who, and the comment they gave ("" if none)."""

    editor: str
    comment: str


def edit_of(session: Session, plan: PlanRow) -> PlanEdit | None:
    """Return who edited this revision and why; None for a planner's revision."""
    if not plan.planner.startswith(EDIT_PREFIX):
        return None
    entries = session.execute(
        select(AuditRow.data)
        .where(AuditRow.goal_id == plan.goal_id, AuditRow.kind == "plan.edited")
        .order_by(AuditRow.seq.desc())
    ).scalars()
    ours = (data for data in entries if isinstance(data, dict))
    said = next((data for data in ours if data.get("plan_id") == plan.plan_id), {})
    comment = said.get("comment")
    editor = plan.planner.removeprefix(EDIT_PREFIX)
    return PlanEdit(editor, comment if isinstance(comment, str) else "")


def summary_written_in(session: Session, plan: PlanRow) -> int | None:
    """Return the earlier revision whose author wrote this one's summary, if an edit kept it.

    An edit that leaves the summary as it was keeps the planner's words over steps they no
    longer describe ("Refund 50" over an amount of 2000): the review says whose they are.
    None for a planner's revision, or an edit that changed the summary.
    """
    if not plan.planner.startswith(EDIT_PREFIX):
        return None
    summary = plan.body.get("summary", "")
    earlier = session.execute(
        select(PlanRow.revision, PlanRow.planner, PlanRow.body)
        .where(PlanRow.goal_id == plan.goal_id, PlanRow.revision < plan.revision)
        .order_by(PlanRow.revision.desc())
    )
    written = None
    for revision, planner, body in earlier:
        if body.get("summary", "") != summary:
            break
        written = revision
        if not planner.startswith(EDIT_PREFIX):  # a planner wrote it; edits before, no longer
            break
    return written
