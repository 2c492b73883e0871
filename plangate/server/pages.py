"""The review page: log in with a reviewer token, see held plans, approve, reject, edit.

Server-rendered (Jinja2, autoescaped). A login starts a session (`sessions.py`): the cookie holds
a signed session id, never the token, and every form carries a CSRF token derived from it.
After a decision the page shows the plan as the store holds it now (`progress.py`).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from approval_gate.held_plan import HeldPlan
from approval_gate.holds import barred_as_submitter
from approval_gate.revisions import editable_steps
from plangate.errors import Conflict, Forbidden, InputInvalid, NotFound, PlanInvalid, quoted
from plangate.printable import printable, printable_json
from plangate.review_views import detail_of, summary_of
from plangate.server.decision_bodies import Settle
from plangate.server.page_access import (
    find_session,
    form_refused,
    read_form,
    refuse_other_sites,
    to_login,
)
from plangate.server.page_words import (
    MAX_REFUSAL_SHOWN,
    NO_HASH,
    NOTICES,
)
from plangate.server.progress import plan_progress
from plangate.server.reviewers import Reviewer
from plangate.server.reviews import ReviewDesk, get_desk, outcome_of
from plangate.server.sessions import WebSession
from plangate.server.templating import templates
from schemas import MessageRejected, strict_json_loads, utcnow

router = APIRouter(include_in_schema=False)

Desk = Annotated[ReviewDesk, Depends(get_desk)]


@router.get("/reviews")
def review_list(request: Request, desk: Desk) -> Response:
    """List every held plan, and the steps waiting to be settled."""
    web = find_session(request, desk)
    if web is None:
        return to_login()
    return list_page(request, desk, web)


PAGE_LISTED = 100  # held plans the list page shows, the oldest


def list_page(
    request: Request,
    desk: ReviewDesk,
    web: WebSession,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    """Return the list of held plans, with an error (and its status) if one is to be said."""
    catalog = desk.catalog()
    context = {
        "reviewer": web.reviewer,
        "csrf": web.csrf,
        # The oldest first, a page's worth: hundreds made a page 200,000 pixels tall.
        "held": [summary_of(h, catalog) for h in desk.review.held(PAGE_LISTED + 1)],
        "listed": PAGE_LISTED,
        "now": utcnow(),
        "unsettled": desk.unsettled(),
        "error": error,
    }
    return templates.TemplateResponse(request, "list.html", context, status_code=status)


@router.post("/reviews/{plan_id}/steps/{step_id}/settle")
async def settle_step(request: Request, plan_id: str, step_id: str, desk: Desk) -> Response:
    """Say from the page whether a step that may or may not have happened did."""
    refuse_other_sites(request)
    web = await run_in_threadpool(find_session, request, desk)
    if web is None:
        return to_login(dropped=True, request=request)
    form = await read_form(request)
    return await run_in_threadpool(_settle, request, desk, plan_id, step_id, web, form)


def _settle(
    request: Request,
    desk: ReviewDesk,
    plan_id: str,
    step_id: str,
    web: WebSession,
    form: dict[str, str],
) -> Response:
    if refused := form_refused(request, web, form):
        return list_page(request, desk, web, error=refused, status=403)
    try:
        happened = {"yes": True, "no": False}[form.get("happened", "")]
        text = form.get("output", "").strip()
        output = strict_json_loads(text.encode()) if text and happened else None
        found = Settle(
            happened=happened,
            output=output,
            comment=form.get("comment", ""),
            unknown_since=form.get("unknown_since") or None,
        )
        desk.settle(plan_id, step_id, web.reviewer, found)
    except KeyError:
        return list_page(request, desk, web, error="Say whether it happened.", status=422)
    except (MessageRejected, ValueError, InputInvalid) as exc:  # bad JSON, a long comment, ...
        problem = f"That cannot be recorded: {exc}"
        return list_page(request, desk, web, error=problem, status=422)
    except (Conflict, Forbidden, NotFound) as exc:
        # Shown after a redirect, as a decision's refusal is: answered at the POST's URL, a
        # reload offered to send the stale settle again.
        return RedirectResponse(_refused_link(web, plan_id, str(exc)), status_code=303)
    return RedirectResponse(_done_link(web, plan_id, "settled"), status_code=303)


def _plan_page(
    request: Request,
    desk: ReviewDesk,
    plan_id: str,
    web: WebSession,
    *,
    notice: str | None = None,
    error: str | None = None,
    problems: list[str] | None = None,
    status: int = 200,
    draft: str | None = None,
    summary: str | None = None,
    why: str = "",
) -> Response:
    held = desk.review.get(plan_id)
    detail = detail_of(held, desk.catalog())
    progress = plan_progress(desk.store, plan_id)
    steps = [step.model_dump() for step in detail.steps]
    editable = editable_steps(steps)
    held_here = progress.status == "held"
    # Said up front, not only as a 403 after a comment was typed: the forms need the roles.
    roles_missing = sorted(held.roles_required - web.reviewer.roles)
    context: dict[str, Any] = {
        "reviewer": web.reviewer,
        "csrf": web.csrf,
        "plan": detail,
        "progress": progress,
        "decidable": held_here and not roles_missing,
        "roles_missing": roles_missing if held_here else [],
        "approved_already": web.reviewer.name in detail.approvers,
        "authored": web.reviewer.name in detail.editors,
        # Said up front as for an editor: the Approve button was offered, then refused (403).
        "barred": _barred(held, web),
        "notice": notice,
        "error": error,
        "problems": problems or [],
        # Its hidden characters as JSON's escapes: seen where they are, read back the same.
        "steps_json": printable_json(editable) if draft is None else draft,
        "summary_text": detail.summary if summary is None else summary,
        "summary_hides": printable(detail.summary) != detail.summary,
        "edit_comment": why,  # a refused edit keeps what its reviewer typed, its reason too
        # Shown to copy where the form is not (another edit replaced the revision meanwhile).
        "drafted": draft is not None,
    }
    return templates.TemplateResponse(request, "plan.html", context, status_code=status)


def _barred(held: HeldPlan, web: WebSession) -> str | None:
    """Return why the hold bars this reviewer from approving as the goal's submitter, if it does."""
    if held.hold is None or not barred_as_submitter(held.hold, held.goal, web.reviewer.name):
        return None
    rule = held.hold.rule
    return f"You submitted this goal, and rule {rule!r} bars the goal's submitter from approving it"


@router.get("/reviews/{plan_id}")
def plan_view(
    request: Request, plan_id: str, desk: Desk, done: str = "", seal: str = "", refused: str = ""
) -> Response:
    """Show one plan: where it stands, its steps, the policy's decision, the diff, the forms."""
    web = find_session(request, desk)
    if web is None:
        return to_login(back_to=f"/reviews/{plan_id}")
    try:
        notice = _notice(web, plan_id, done, seal)
        # Only as this session's own refusal: a link anyone sends may not put words here.
        error = refused if refused and _sealed(web, plan_id, f"refused:{refused}", seal) else None
        return _plan_page(request, desk, plan_id, web, notice=notice, error=error)
    except NotFound:  # in the page's words (the store's name a command to run)
        said = f"There is no plan {quoted(plan_id)}: the list below shows the plans held now."
        return list_page(request, desk, web, error=said, status=404)


@router.post("/reviews/{plan_id}/{action}")
async def act(request: Request, plan_id: str, action: str, desk: Desk) -> Response:
    """Approve, reject or edit from the page; show the outcome or why it was refused."""
    refuse_other_sites(request)
    web = await run_in_threadpool(find_session, request, desk)
    if web is None:
        return to_login(dropped=True, back_to=f"/reviews/{plan_id}", request=request)
    form = await read_form(request)
    return await run_in_threadpool(_act, request, desk, plan_id, action, web, form)


def _act(
    request: Request,
    desk: ReviewDesk,
    plan_id: str,
    action: str,
    web: WebSession,
    form: dict[str, str],
) -> Response:
    # A refused edit shows the form as the reviewer filled it in, summary and steps.
    draft = form.get("steps") if action == "edit" else None
    summary = form.get("summary") if action == "edit" else None
    why = form.get("comment", "") if action == "edit" else ""
    if refused := form_refused(request, web, form):
        return _plan_page(request, desk, plan_id, web, error=refused, status=403)
    try:
        target = _decide(desk, plan_id, action, web.reviewer, form)
    except (Conflict, Forbidden, NotFound, InputInvalid, ValueError) as exc:
        status = _refusal_status(exc)
        said = str(exc)
        if action != "edit" and status != 422:
            # Shown after a redirect, not as the POST's answer: a reload sent the decision
            # again (the browser asked to resubmit, and the audit log had each refusal twice).
            # An edit's refusal is its answer: what was typed (10,000 characters) is shown.
            return RedirectResponse(_refused_link(web, plan_id, said), status_code=303)
        return _plan_page(
            request,
            desk,
            plan_id,
            web,
            error=said,
            status=status,
            draft=draft,
            summary=summary,
            why=why,
        )
    except PlanInvalid as exc:
        return _plan_page(
            request,
            desk,
            plan_id,
            web,
            error="The edited plan is invalid.",
            problems=[str(p) for p in exc.problems],
            status=422,
            draft=draft,
            summary=summary,
            why=why,
        )
    done = {"approve": "approved", "reject": "rejected", "edit": "edited"}[action]
    return RedirectResponse(_done_link(web, target, done), status_code=303)


def _refusal_status(refused: Exception) -> int:
    """Return the status of a refused decision: 422 only for a form to correct in place.

    By its class and its subclasses: an approval given already (a Conflict) was answered
    422, as a form to correct, on the POST itself, which a reload sent again.
    """
    for kind, status in ((Conflict, 409), (Forbidden, 403), (NotFound, 404)):
        if isinstance(refused, kind):
            return status
    return 422


def _done_link(web: WebSession, plan_id: str, done: str) -> str:
    """Return the plan's page, saying what this session just recorded on it.

    The notice is sealed to the session (its form token keys it): `?done=approved` alone,
    in a link anyone can send, showed "Your approval is recorded" to a reviewer who had not
    decided, who might then not.
    """
    return f"/reviews/{plan_id}?done={done}&seal={_seal(web, plan_id, done)}"


def _refused_link(web: WebSession, plan_id: str, said: str) -> str:
    """Return the plan's page, saying why this session's decision was refused (sealed, too)."""
    said = said[:MAX_REFUSAL_SHOWN]
    seal = _seal(web, plan_id, f"refused:{said}")
    return f"/reviews/{plan_id}?{urlencode({'refused': said, 'seal': seal})}"


def _seal(web: WebSession, plan_id: str, done: str) -> str:
    return hmac.new(web.csrf.encode(), f"{plan_id}:{done}".encode(), "sha256").hexdigest()[:32]


def _notice(web: WebSession, plan_id: str, done: str, seal: str) -> str | None:
    """Return the notice of what this session recorded, if the link is sealed to it."""
    if done not in NOTICES or not _sealed(web, plan_id, done, seal):
        return None
    return NOTICES[done]


def _sealed(web: WebSession, plan_id: str, what: str, seal: str) -> bool:
    return hmac.compare_digest(seal.encode(), _seal(web, plan_id, what).encode())


def _decide(
    desk: ReviewDesk, plan_id: str, action: str, reviewer: Reviewer, form: dict[str, str]
) -> str:
    """Run one decision from a form; return the plan id to show next."""
    if action not in ("approve", "reject", "edit"):
        raise NotFound(f"no action {quoted(action)}; use approve, reject or edit")
    expected = form.get("plan_hash", "").strip()
    if not expected:  # the page always sends it: a decision must be on what was shown
        raise ValueError(NO_HASH)
    held = desk.review.get(plan_id)
    goal_id = held.goal.id
    if action == "approve":
        desk.decide(
            lambda r: r.approve(
                plan_id,
                reviewer.name,
                expected_hash=expected,
                roles=reviewer.roles,
                comment=form.get("comment", ""),  # bound where it is recorded
                key=reviewer.token_sha256,
            )
        )
    elif action == "reject":
        comment = form.get("comment", "").strip()
        if not comment:
            raise ValueError("Say why you reject the plan: a comment is required.")
        desk.decide(
            lambda r: r.reject(
                plan_id, reviewer.name, comment, expected_hash=expected, roles=reviewer.roles
            )
        )
    elif action == "edit":
        steps = _steps(form.get("steps", ""))
        summary = _summary_changed(form.get("summary", ""), held.plan.body.get("summary", ""))
        why = form.get("comment", "").strip()  # bound where it is recorded
        desk.decide(
            lambda r: r.edit(
                plan_id,
                reviewer.name,
                steps,
                summary=summary,
                expected_hash=expected,
                roles=reviewer.roles,
                comment=why,
            )
        )
        return outcome_of(desk, goal_id, "edited").plan_id or plan_id
    else:
        raise NotFound(f"no action {quoted(action)}; use approve, reject or edit")
    return plan_id


def _summary_changed(sent: str, shown: str) -> str | None:
    """Return the summary an edit form sent; None where it is the revision's, or left empty.

    A text field drops line breaks: a summary holding one came back changed by the browser,
    not by the reviewer, and was saved so, no longer said to be the planner's words.
    """
    if not sent or sent == shown.replace("\r", "").replace("\n", ""):
        return None
    return sent


def _steps(text: str) -> list[dict[str, Any]]:
    try:
        steps = strict_json_loads(text)
    except MessageRejected as exc:
        found = str(exc).removeprefix("body is ")  # the decoder's word: here it is one field
        raise ValueError(f"The steps field is not JSON plangate reads: {found}.") from None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ValueError("The steps must be a JSON list of objects, one per step.")
    return steps
