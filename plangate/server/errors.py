"""The server's errors: every failure answers JSON `{"error": "...what to do..."}`.

Every answer is redacted (`plangate.redaction`): an error quoting a secret says `[redacted]`.
An unexpected error answers 500 JSON, never the framework's plain text; text that cannot be
encoded (a lone surrogate that got past the door) answers 422.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from plangate.errors import Conflict, Forbidden, InputInvalid, NotFound, PlanInvalid
from plangate.redaction import redact


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


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return error_response(404, str(exc))


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return error_response(409, str(exc))


async def _forbidden(request: Request, exc: Exception) -> JSONResponse:
    return error_response(403, str(exc))


async def _input_invalid(request: Request, exc: Exception) -> JSONResponse:
    return error_response(422, str(exc))


async def _plan_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PlanInvalid)
    body = {
        "error": redact(f"{exc}; fix the steps and send them again"),
        "problems": [
            {"code": p.code, "message": redact(p.message), "step_id": p.step_id}
            for p in exc.problems
        ],
    }
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


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


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The framework logs the error itself (redacted, as every record); the caller gets JSON.
    return error_response(500, "the server failed on this request; its log says why")


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
    app.add_exception_handler(Exception, _unexpected)
