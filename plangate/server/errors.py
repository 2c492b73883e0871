"""The server's errors: every failure answers JSON `{"error": "...what to do..."}`.

A browser asking for a page (`Accept: text/html`) outside /api/ gets the same words as a page
with links back, not a JSON document it would show raw.

Every answer is redacted (`plangate.redaction`): an error quoting a secret says `[redacted]`.
An unexpected error answers 500 JSON, never the framework's plain text; text that cannot be
encoded (a lone surrogate that got past the door) answers 422.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError, ProgrammingError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from plangate.errors import (
    NO_ROUTE,
    Conflict,
    Forbidden,
    InputInvalid,
    NotFound,
    PlanInvalid,
    StoreUnavailable,
)
from plangate.redaction import redact
from plangate.server.templating import templates
from plangate.store.engine import failure_cause
from plangate.store.sqlstates import INSUFFICIENT_PRIVILEGE, OWNER_ADVICE, refusal, sqlstate

_log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the server refuses: the HTTP status and a message saying what to do."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(message)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Return the JSON error body every route answers with (redacted)."""
    return JSONResponse({"error": redact(message)}, status_code=status, headers=headers)


def answer(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """Answer an error as JSON, or as a page to a browser asking for one outside the API."""
    wants_page = "text/html" in request.headers.get("accept", "")
    if not wants_page or request.url.path.startswith("/api/"):
        return error_response(status, message, headers)
    context = {
        "status": status,
        "title": _TITLES.get(status, "Refused"),
        "message": redact(message),
    }
    return templates.TemplateResponse(
        request, "error.html", context, status_code=status, headers=headers
    )


_TITLES = {
    400: "That request cannot be read",
    403: "Not allowed",
    404: "Nothing here",
    405: "Not allowed here",
    409: "That changed meanwhile",
    413: "Too large",
    422: "That cannot be used",
    429: "Too many requests",
    500: "The server failed",
    503: "Not available now",
}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return answer(request, exc.status, exc.message, exc.headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    return answer(request, 404, str(exc))


async def _conflict(request: Request, exc: Exception) -> Response:
    return answer(request, 409, str(exc))


async def _forbidden(request: Request, exc: Exception) -> Response:
    return answer(request, 403, str(exc))


async def _input_invalid(request: Request, exc: Exception) -> Response:
    return answer(request, 422, str(exc))


async def _plan_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PlanInvalid)
    body = {
        "error": redact(f"{exc}; fix the plan and send it again"),
        "problems": [
            {"code": p.code, "message": redact(p.message), "step_id": p.step_id}
            for p in exc.problems
        ],
    }
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    message = str(exc.detail)
    # The framework's own words say what, not what to do.
    if exc.status_code == 404 and message == "Not Found":
        message = (
            f"{NO_ROUTE}{request.url.path[:200]}; the review page is /reviews, the goals "
            "/goals, and the API's routes are listed at /docs"
        )
    elif exc.status_code == 405 and message == "Method Not Allowed":
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        allowed = _methods_at(request)
        if allowed:
            headers["Allow"] = allowed
        message = (
            f"{request.method} is not taken at {request.url.path[:200]}; "
            f"use {allowed or 'another method'}"
        )
    return answer(request, exc.status_code, message, headers)


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _methods_at(request: Request) -> str:
    """Return every method some route takes at the request's path (`Allow`).

    The router's 405 names the methods of the first route at the path only: POST at
    /api/v1/goals, where GET is served too.
    """
    # Each method is asked of the routes (FastAPI nests included routers: asking is public).
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    )


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()
    )
    return error_response(422, f"invalid request: {problems}")


async def _unencodable(request: Request, exc: Exception) -> JSONResponse:
    return error_response(
        422, "the request holds text that cannot be encoded (a lone surrogate); send valid Unicode"
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Not the server's failure, and nobody is left to answer: an info line, no traceback.
    _log.info(
        "the client went away before its request's body arrived: %s %s",
        request.method,
        request.url.path[:200],
    )
    return Response(status_code=400)


async def _store_failed(request: Request, exc: Exception) -> Response:
    """Answer 503, to be tried again, when the store does not answer (a database restarting).

    It was a 500 with a traceback (the statement and its parameters) logged at each request;
    `/readyz` said the same in one line. So is work the database refused for now (too many
    connections, a lock or statement timeout, a serialization conflict): its reason answered,
    what to change logged. Any other failure of the database is still a 500.
    """
    where = f"{request.method} {request.url.path[:200]}"
    refused = refusal(exc)
    if refused is not None:
        _log.warning("%s: %s (%s)", where, refused, failure_cause(exc))
        return answer(request, 503, f"{refused.reason}; try again shortly", {"Retry-After": "5"})
    problem = await run_in_threadpool(_store_problem, request)
    if problem is None and getattr(exc, "connection_invalidated", False):
        # The server came back before the probe looked (an immediate restart): the request's
        # connection was the old one's. Worth trying again, as any restart's 503.
        problem = "the database connection was lost (the database restarted?)"
    if problem is None:
        _log.error("%s failed on the store", where, exc_info=exc)
        return await _unexpected(request, exc)
    _log.warning("%s: %s (%s)", where, problem, type(exc).__name__)
    return answer(request, 503, f"{problem}; try again shortly", {"Retry-After": "5"})


async def _store_refused_role(request: Request, exc: Exception) -> Response:
    """Answer 500 saying so when the database refuses plangate's role a privilege.

    A grant missing (a table revoked, one a migration added without default privileges) was a
    traceback of 110 lines logged with the statement and its parameters (a goal's text), and
    "the server failed". One line now says what PostgreSQL refused and what to grant.
    """
    where = f"{request.method} {request.url.path[:200]}"
    if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
        _log.error("%s failed on the store", where, exc_info=exc)
        return await _unexpected(request, exc)
    _log.error("%s: %s; %s", where, failure_cause(exc), OWNER_ADVICE)
    said = "the database refuses plangate's role a privilege; the server's log says what to grant"
    return answer(request, 500, said)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """As `_store_failed`: a Client's call says the driver's outage as StoreUnavailable."""
    cause = exc.__cause__
    return await _store_failed(request, cause if isinstance(cause, Exception) else exc)


_PROBED_FOR = 5.0  # seconds one look at the store answers for: not one more probe a request


def _store_problem(request: Request) -> str | None:
    """Return why the store does not answer, as the app last saw it within a few seconds."""
    from plangate.readiness import not_ready  # the server's modules import this one

    state = request.app.state
    at, problem = getattr(state, "store_probed", (-_PROBED_FOR, None))
    if time.monotonic() - at < _PROBED_FOR:
        return problem
    desk = getattr(state, "desk", None)  # none before the lifespan has run
    problem = None if desk is None else not_ready(desk.store)
    state.store_probed = (time.monotonic(), problem)
    return problem


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The framework logs the error itself (redacted, as every record); the caller gets JSON.
    return answer(request, 500, "the server failed on this request; its log says why")


def install_handlers(app: FastAPI) -> None:
    """Make every error, ours or the framework's, answer `{"error": ...}`."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(InputInvalid, _input_invalid)
    app.add_exception_handler(PlanInvalid, _plan_invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(UnicodeEncodeError, _unencodable)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(OperationalError, _store_failed)
    app.add_exception_handler(ProgrammingError, _store_refused_role)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)
