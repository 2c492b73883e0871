"""Logging in and out of the review pages: a token for a session, and back where you were.

A login returns to the plan's page that sent the browser to it (a review link in a notice),
never anywhere else: only a plan's page of this server is taken as `next`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from plangate.server.cross_site import sent_from_another_site
from plangate.server.errors import ApiError
from plangate.server.page_access import (
    find_session,
    form_refused,
    read_form,
    return_path,
    session_keeper,
    to_login,
)
from plangate.server.page_words import (
    FORM_FROM_OTHER_SITE,
    OTHER_SITE,
    REVIEWER_GONE,
    SESSION_ENDED,
)
from plangate.server.pages import Desk, list_page
from plangate.server.ratelimit import client_address, get_limit
from plangate.server.reviewers import Reviewer, get_reviewers
from plangate.server.reviews import ReviewDesk
from plangate.server.templating import templates

router = APIRouter(include_in_schema=False)


def _login_page(
    request: Request,
    error: str | None = None,
    status: int = 200,
    *,
    back_to: str = "",
    note: str = "",
) -> Response:
    context = {"error": error, "next": return_path(back_to) or "", "note": note}
    return templates.TemplateResponse(request, "login.html", context, status_code=status)


@router.get("/")
def home() -> RedirectResponse:
    """Send a visitor to the list of held plans."""
    return RedirectResponse("/reviews", status_code=303)


@router.get("/login")
def login_page(request: Request, ended: str = "", out: str = "", next: str = "") -> Response:
    """Show the login form (saying so when a decision was sent after the session ended)."""
    note = "You are logged out." if out else ""
    said = REVIEWER_GONE if ended == "gone" else SESSION_ENDED if ended else None
    return _login_page(request, said, back_to=next, note=note)


@router.post("/login")
async def login(request: Request, desk: Desk) -> Response:
    """Check the token and start a session; too many failures from one address answer 429."""
    limit, address = get_limit(request), client_address(request)
    form = await read_form(request)
    token, back_to = form.get("token", "").strip(), form.get("next", "")
    if sent_from_another_site(request, request.app.state.settings.public_url):
        return _login_page(request, OTHER_SITE, 403)
    reviewers = get_reviewers(request)
    reviewer = reviewers.identify(token)
    if reviewer is None and reviewers.problem is not None:  # nobody is known: not your token
        return _login_page(request, "Nobody can log in until the reviewers file is fixed.", 503)
    if reviewer is None:
        wait = limit.retry_after(address)  # a valid token passes: see `ratelimit`
        if wait is not None:
            response = _login_page(
                request, f"Too many failed logins from your address; try again in {wait} s.", 429
            )
            response.headers["Retry-After"] = str(wait)
            return response
        limit.count(address)
        said = "That token is not a reviewer's; check it and try again."
        return _login_page(request, said, 401, back_to=back_to)
    response = RedirectResponse(return_path(back_to) or "/reviews", status_code=303)
    await run_in_threadpool(_restart, request, desk, reviewer, response)
    return response


def _restart(request: Request, desk: ReviewDesk, reviewer: Reviewer, response: Response) -> None:
    """Start `reviewer`'s session, ending the one the browser had: it would outlive a logout."""
    keeper = session_keeper(request)
    earlier = find_session(request, desk)
    if earlier is not None:
        keeper.end(desk.store, earlier)
    keeper.start(desk.store, reviewer, response)


@router.post("/logout")
async def logout(request: Request, desk: Desk) -> Response:
    """End the session on every replica and forget its cookie."""
    form = await read_form(request)
    if sent_from_another_site(request, request.app.state.settings.public_url):
        # Before the session is looked for: a strict cookie is not sent from another site, so
        # a forged logout found none, cleared the cookie and said "You are logged out."
        raise ApiError(403, FORM_FROM_OTHER_SITE)
    web = await run_in_threadpool(find_session, request, desk)
    keeper = session_keeper(request)
    response = to_login(logged_out=True)
    if web is None:
        keeper.clear(response)
    elif refused := form_refused(request, web, form):
        return list_page(request, desk, web, error=refused, status=403)
    else:
        await run_in_threadpool(keeper.end, desk.store, web, response)
    return response
