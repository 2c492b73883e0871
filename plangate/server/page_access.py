"""Who is on a review page: the reviewer's web session, the forms it sends, and the login.

A request's session is found from its cookie (`sessions.py`); a form is refused when another
site sent it or its CSRF token is stale; without a session, the browser is sent to log in and
brought back to the page it asked for.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode

from fastapi import Request
from fastapi.responses import RedirectResponse

from plangate.server.cross_site import sent_from_another_site
from plangate.server.errors import ApiError
from plangate.server.json_bodies import read_body
from plangate.server.page_words import EXPIRED_FORM, FORM_FROM_OTHER_SITE
from plangate.server.reviewers import get_reviewers
from plangate.server.reviews import ReviewDesk
from plangate.server.sessions import SessionKeeper, WebSession

# Where a login may return to: a plan's or a goal's page here (ids plangate makes), never a URL.
_PLAN_PAGE = re.compile(r"/(?:reviews|goals)/[0-9a-f]{1,64}")


def session_keeper(request: Request) -> SessionKeeper:
    """Return the app's keeper of reviewers' web sessions."""
    keeper: SessionKeeper = request.app.state.sessions
    return keeper


def form_refused(request: Request, web: WebSession, form: dict[str, str]) -> str | None:
    """Say why a session's form is refused: sent from another site, or its token is stale."""
    if sent_from_another_site(request, request.app.state.settings.public_url):
        return FORM_FROM_OTHER_SITE
    return None if session_keeper(request).csrf_valid(web, form.get("csrf", "")) else EXPIRED_FORM


def refuse_other_sites(request: Request) -> None:
    """Refuse (403) a form another site sent, before its session is looked for.

    Its strict cookie is not sent from another site: looked for first, no session was found,
    and the forged decision was answered "your session had ended: log in and do it again".
    """
    if sent_from_another_site(request, request.app.state.settings.public_url):
        raise ApiError(403, FORM_FROM_OTHER_SITE)


def find_session(request: Request, desk: ReviewDesk) -> WebSession | None:
    """Return the browser's web session, or None if it has none (or it ended)."""
    return session_keeper(request).find(desk.store, get_reviewers(request), request)


async def read_form(request: Request) -> dict[str, str]:
    """Return a form's fields, each its first value (bounded, UTF-8)."""
    body = await read_body(request, 256 * 1024)
    try:
        # Strict: a form a browser sends is UTF-8, percent-encoded beyond ASCII.
        fields = parse_qs(body.decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "the form is not UTF-8; send it from the review page") from exc
    return {name: values[0] for name, values in fields.items()}


def session_or_login(request: Request, desk: ReviewDesk) -> WebSession | RedirectResponse:
    """Return the reviewer's web session, or the redirect to the login page (and back here)."""
    web = find_session(request, desk)
    return to_login(back_to=request.url.path) if web is None else web


def to_login(
    *,
    dropped: bool = False,
    back_to: str = "",
    logged_out: bool = False,
    request: Request | None = None,
) -> RedirectResponse:
    """Return the redirect to the login page, saying why, and where to come back to."""
    # `dropped`: the request was a decision, which is lost with the session; the page says so,
    # and whether the reviewer is gone (`request`'s session found no reviewer): then logging in
    # again, as a session ended for its age asks, cannot help.
    # `back_to`: the plan's page the login returns to (a review link in a notice, say).
    gone = request is not None and getattr(request.state, "plangate_reviewer_gone", False)
    query = {"ended": "gone" if gone else "1"} if dropped else {"out": "1"} if logged_out else {}
    if return_path(back_to):
        query["next"] = back_to
    return RedirectResponse(f"/login?{urlencode(query)}" if query else "/login", status_code=303)


def return_path(path: str) -> str | None:
    """Return `path` if a login may send the browser there: a plan's or goal's page here."""
    return path if _PLAN_PAGE.fullmatch(path) else None
