"""The goals pages: every goal with its state, and one goal with its plan, outputs and audit.

Behind the same reviewer login as the review pages. Everything a goal carries (its text, the
plan, tool outputs, audit data) is shown as data: autoescaped text, never markup.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from plangate.client import Client
from plangate.errors import InputInvalid
from plangate.server.deps import get_client
from plangate.server.page_access import session_or_login
from plangate.server.pages import Desk
from plangate.server.templating import templates
from plangate.store import AuditRow, GoalRow
from plangate.store.goal_list import parse_since
from schemas import utcnow

router = APIRouter(include_in_schema=False)
ClientDep = Annotated[Client, Depends(get_client)]
SHOWN_CHARS = 2_000  # of one output on the page; the rest behind "show all"
# Entries of a goal's audit shown: its first and its newest. Oldest first alone, a goal whose
# chain someone filled (refused decisions) showed only those, and not who approved it after.
FIRST_AUDIT, LAST_AUDIT = 100, 400


@router.get("/goals")
def goals_page(
    request: Request,
    desk: Desk,
    client: ClientDep,
    state: str = "",
    search: str = "",
    since: str = "",
    cursor: str = "",
) -> Response:
    """List goals newest first, with filters by state, text and age."""
    web = session_or_login(request, desk)
    if isinstance(web, Response):
        return web
    error = None
    try:
        page = client.list_goals(
            state=state or None,
            search=search[:200] or None,
            since=parse_since(since) if since else None,
            cursor=cursor or None,
            limit=50,
        )
        goals, next_cursor = page.goals, page.next_cursor
    except InputInvalid as exc:
        error, goals, next_cursor = str(exc), [], None
    context = {
        "reviewer": web.reviewer,
        "csrf": web.csrf,
        "goals": goals,
        "next_cursor": next_cursor,
        "filters": {"state": state, "search": search, "since": since},
        "now": utcnow(),
        "error": error,
    }
    return templates.TemplateResponse(
        request, "goals.html", context, status_code=422 if error else 200
    )


@router.get("/goals/{goal_id}")
def goal_page(request: Request, goal_id: str, desk: Desk, client: ClientDep) -> Response:
    """Show one goal: its plan, each step's status, duration and output, its audit and trace."""
    web = session_or_login(request, desk)
    if isinstance(web, Response):
        return web
    current = client.status(goal_id)  # NotFound: 404 like the API
    goal_id = current.goal_id  # a short id named it: the rows are under the whole one
    with desk.store.reading() as session:
        of_goal = select(AuditRow).where(AuditRow.goal_id == goal_id)
        first = session.scalars(of_goal.order_by(AuditRow.seq).limit(FIRST_AUDIT)).all()
        last = session.scalars(of_goal.order_by(AuditRow.seq.desc()).limit(LAST_AUDIT)).all()
        newest = [e for e in reversed(last) if not first or e.seq > first[-1].seq]
        left_out = 0
        if len(newest) == LAST_AUDIT:  # perhaps more between the two: count them
            count = select(func.count()).select_from(AuditRow)
            between = AuditRow.seq.between(first[-1].seq + 1, newest[0].seq - 1)
            left_out = session.scalar(count.where(AuditRow.goal_id == goal_id, between)) or 0
        shown = (*first, *newest)
        audit = [{"at": e.at, "kind": e.kind, "actor": e.actor, "data": e.data} for e in shown]
        text = session.get_one(GoalRow, goal_id).text
    settings = client.settings
    trace_url = (
        f"{settings.jaeger_url.rstrip('/')}/trace/{current.trace_id}" if current.trace_id else None
    )
    context: dict[str, Any] = {
        "reviewer": web.reviewer,
        "csrf": web.csrf,
        "goal": current,
        "goal_text": text,
        "audit": audit,
        "audit_split": len(first) if left_out else None,
        "audit_left_out": left_out,
        "trace_url": trace_url,
        "shown_chars": SHOWN_CHARS,
    }
    return templates.TemplateResponse(request, "goal.html", context)
