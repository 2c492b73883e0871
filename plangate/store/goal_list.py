"""Finding goals: newest first, filtered by state, age and text, a page at a time.

Pages are cut by keyset, not offset: the cursor is the last goal's (created_at, id), so a page
is one indexed range scan however deep, and goals submitted meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from plangate.errors import InputInvalid
from plangate.store.models import AuditRow, DecisionRow, GoalRow, PlanRow, ReviewerApprovalRow
from schemas import utcnow
from schemas.goal_states import TRANSITIONS

MAX_PAGE = 200
_MAX_SEARCH = 200
_STATES = frozenset(TRANSITIONS) | {t for moves in TRANSITIONS.values() for t in moves}
_AGO = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, name: str = "since") -> datetime:
    """Read `--since` (or `--until`, `name`): an age (30m, 2h, 7d, 1w) or an ISO-8601 time.

    A time that names no zone is UTC.
    """
    text = text.strip()
    if match := _AGO.match(text):
        try:
            return utcnow() - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:  # 999999w: before the first year there is
            raise InputInvalid(
                f"{name} {text!r} goes back past year 1; give a shorter age"
            ) from None
    if re.fullmatch(r"\d+[smhdw]", text):
        raise InputInvalid(f"{name} {text!r} is too long an age: at most six digits (e.g. 90d)")
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InputInvalid(
            f"{name} {text!r} is neither an age (30m, 2h, 7d, 1w) nor an ISO time "
            "(2026-12-01 or 2026-12-01T09:00:00Z)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def check_window(since: datetime | None, until: datetime | None) -> None:
    """Refuse a window that ends before it starts: it chose nothing, and said so as a result."""
    if since is not None and until is not None and since >= until:
        raise InputInvalid(
            f"since ({since.isoformat()}) is not before until ({until.isoformat()}): "
            "swap them, or give one"
        )


@dataclass(frozen=True)
class GoalSummary:
    """One row of the goal list."""

    goal_id: str
    status: str
    text: str
    source: str | None
    created_at: datetime
    updated_at: datetime
    revision: int | None
    # Who cancelled it; else the rule that decided, or the person, or the people who approved
    # it together ("alice, bob", in the order they approved).
    decided_by: str | None


@dataclass(frozen=True)
class GoalPage:
    """A page of goals and the cursor of the next one (None: this was the last)."""

    goals: list[GoalSummary]
    next_cursor: str | None


def list_goals(
    session: Session,
    *,
    state: str | Collection[str] | None = None,
    since: datetime | None = None,
    search: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    until: datetime | None = None,
) -> GoalPage:
    """Return the newest goals matching every filter given, `limit` at most (1-200).

    `state` is one state or several (a goal in any of them).
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InputInvalid(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    check_window(since, until)
    query = select(GoalRow)
    states = [state] if isinstance(state, str) else list(state or ())
    if states:
        for one in states:
            if one not in _STATES:
                known = ", ".join(sorted(_STATES))
                raise InputInvalid(f"no goal state {one!r}; one of: {known}")
        query = query.where(GoalRow.status.in_(states))
    if since is not None:
        query = query.where(GoalRow.created_at >= since)
    if until is not None:
        query = query.where(GoalRow.created_at < until)
    if search:
        if len(search) > _MAX_SEARCH:
            raise InputInvalid(f"search text is limited to {_MAX_SEARCH} characters")
        if "\x00" in search:  # SQLite's LIKE ends the pattern there: `%` matched every goal
            raise InputInvalid("search text cannot hold NUL; search for words")
        pattern = "%" + search.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"
        query = query.where(
            or_(GoalRow.text.ilike(pattern, escape="\\"), GoalRow.id == search.strip())
        )
    if cursor is not None:  # an empty one too: a script that lost it repeated page 1 for good
        at, goal_id = _decode(cursor)
        query = query.where(
            or_(
                GoalRow.created_at < at,
                and_(GoalRow.created_at == at, GoalRow.id < goal_id),
            )
        )
    rows = list(
        session.execute(
            query.order_by(GoalRow.created_at.desc(), GoalRow.id.desc()).limit(limit + 1)
        ).scalars()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    latest = _latest_plans(session, [row.id for row in rows])
    decided = _deciders(session, [plan.plan_id for plan in latest.values()])
    cancelled = _cancellers(session, [row.id for row in rows if row.status == "cancelled"])
    goals = [
        GoalSummary(
            goal_id=row.id,
            status=row.status,
            text=row.text,
            source=source_of(row.meta),
            created_at=row.created_at,
            updated_at=row.updated_at,
            revision=latest[row.id].revision if row.id in latest else None,
            decided_by=cancelled.get(row.id)
            or (decided.get(latest[row.id].plan_id) if row.id in latest else None),
        )
        for row in rows
    ]
    next_cursor = _encode(rows[-1].created_at, rows[-1].id) if more and rows else None
    return GoalPage(goals, next_cursor)


def _latest_plans(session: Session, goal_ids: list[str]) -> dict[str, PlanRow]:
    if not goal_ids:
        return {}
    plans = session.execute(
        select(PlanRow).where(PlanRow.goal_id.in_(goal_ids)).order_by(PlanRow.revision)
    ).scalars()
    return {plan.goal_id: plan for plan in plans}  # the last revision wins


def _deciders(session: Session, plan_ids: list[str]) -> dict[str, str]:
    if not plan_ids:
        return {}
    rows = session.execute(
        select(DecisionRow.plan_id, DecisionRow.rule, DecisionRow.decided_by)
        .where(DecisionRow.plan_id.in_(plan_ids))
        .order_by(DecisionRow.id)
    )
    decided = {plan_id: rule or person for plan_id, rule, person in rows}  # the last one wins
    approvers: dict[str, list[str]] = {}
    for plan_id, reviewer in session.execute(
        select(ReviewerApprovalRow.plan_id, ReviewerApprovalRow.reviewer)
        .where(ReviewerApprovalRow.plan_id.in_(plan_ids))
        .order_by(ReviewerApprovalRow.created_at, ReviewerApprovalRow.reviewer)
    ):
        approvers.setdefault(plan_id, []).append(reviewer)
    for plan_id, names in approvers.items():
        # An approval that took several people: the last of them alone read as one person's.
        if len(names) > 1 and decided.get(plan_id) in names:
            decided[plan_id] = ", ".join(names)
    return decided


def _cancellers(session: Session, goal_ids: list[str]) -> dict[str, str]:
    """Return who cancelled each goal: the last word on it, not the rule that held its plan."""
    if not goal_ids:
        return {}
    rows = session.execute(
        select(AuditRow.goal_id, AuditRow.actor)
        .where(AuditRow.goal_id.in_(goal_ids), AuditRow.kind == "goal.cancelled")
        .order_by(AuditRow.seq)
    )
    return {str(goal_id): actor for goal_id, actor in rows}


# The metadata keys that name who or what submitted a goal, the first found shown first.
SUBMITTER_KEYS = ("submitter", "submitted_by", "source", "ce.source", "user")


def source_of(meta: dict[str, Any]) -> str | None:
    """Return who or what submitted a goal, as its metadata says (None if it does not)."""
    return next(iter(submitters_of(meta)), None)


def submitters_said(meta: dict[str, Any]) -> str | None:
    """Return everyone the submitter bar reads as the goal's submitter, as one text (or None).

    Shown as the submitter, one of several named (`submitted_by: billing`, `user: alice`)
    hid the one a reviewer was then barred as.
    """
    return ", ".join(submitters_of(meta)) or None


def submitters_of(meta: dict[str, Any]) -> list[str]:
    """Return everyone a goal's metadata names as its submitter, under any of the keys.

    A rule that bars the submitter bars each: a goal may name one under `submitted_by` (as
    the docs' raw publisher does) and another under `submitter`.
    """
    named = (meta.get(key) for key in SUBMITTER_KEYS)
    return list(dict.fromkeys(v for v in named if isinstance(v, str) and v))


def _encode(at: datetime, goal_id: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{goal_id}".encode()).decode()


def _decode(cursor: str) -> tuple[datetime, str]:
    try:
        at, goal_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(at), goal_id
    except (ValueError, binascii.Error, UnicodeError):
        raise InputInvalid("the cursor is not one this list gave; start again without it") from None
