"""What a model server's failure says: one sentence naming what went wrong and what to do.

The openai SDK's exceptions say little ("Connection error.", "Error code: 429"); these
sentences name the server, the retries made, the server's own words (quoted redacted) and the
setting or step that helps.
"""

from __future__ import annotations

import httpx
import openai

from plangate.printable import printable
from plangate.redaction import quoted
from planner_worker.model_http import AnswerTooLarge

_DETAIL_CHARS = 300
_WAIT_CHARS = 64  # an HTTP date is 29
# What httpx's HTTP/1.1 parser (h11) says of a status line and headers longer than it reads.
_HEAD_TOO_LONG = "Receive buffer too long"


def failure_reason(exc: openai.OpenAIError, client: openai.OpenAI, model: str) -> str:
    """Say in one sentence what went wrong and what to do about it."""
    url = client.base_url
    count = _retries_taken(exc, client.max_retries)
    retries = f"after {count} {'retry' if count == 1 else 'retries'}"
    detail = _detail(exc)
    if isinstance(exc, AnswerTooLarge):
        return str(exc)
    if isinstance(exc, openai.APIStatusError) and 300 <= exc.status_code < 400:
        location = quoted(exc.response.headers.get("location", ""), _DETAIL_CHARS)
        return (
            f"the model server at {url} redirects (HTTP {exc.status_code}) to "
            f"{location or 'nowhere'}; plangate does not follow a model server's redirects "
            "(they would carry the API key): set OPENAI_BASE_URL to the address it points at"
        )
    if isinstance(exc, openai.APITimeoutError):
        return (
            f"the model server at {url} did not answer within {client.timeout} s "
            f"({retries}); check that it is up and not overloaded (a hung server is cut "
            "off so too), or raise PLANGATE_PLANNER_TIMEOUT_SECONDS if it is only slow"
        )
    if isinstance(exc, openai.APIConnectionError):
        return _transport_reason(exc, url, retries)
    if isinstance(exc, openai.RateLimitError):
        wait = _asked_to_wait(exc)
        when = (
            f"it asked to wait {wait}: then `plangate goals retry GOAL`"
            if wait
            else "wait and resubmit"
        )
        return (
            f"the model server rate-limited the planner (HTTP 429 {retries}: {detail}); "
            f"{when}, lower the planner's concurrency, or raise your rate limit"
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return (
            f"the model server refused the API key (HTTP {exc.status_code}: {detail}); "
            "check OPENAI_API_KEY"
        )
    if isinstance(exc, openai.NotFoundError):
        return (
            f"the model server at {url} has no model {model!r} (HTTP 404: {detail}); "
            "check PLANGATE_MODEL and OPENAI_BASE_URL"
        )
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return (
            f"the model server failed (HTTP {exc.status_code} {retries}: {detail}); try again later"
        )
    if isinstance(exc, openai.BadRequestError):
        # Retried only when the server asked (`x-should-retry`): then say so.
        tried = f" {retries}" if count else ""
        return (
            f"the model server refused the request (HTTP 400{tried}: {detail}); it must "
            f"support structured outputs (response_format json_schema) for model {model!r}"
        )
    if isinstance(exc, openai.APIStatusError):
        return f"the model server answered HTTP {exc.status_code}: {detail}"
    return f"the openai client failed: {detail}"


def call_outcome(exc: BaseException | None) -> str:
    """Return the `plangate_llm_calls` outcome of a call that failed with `exc`.

    None (no SDK error: the answer was no sane chat completion) is `invalid_answer`.
    """
    if exc is None or isinstance(exc, AnswerTooLarge):
        return "invalid_answer"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "unreachable"
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "unauthorized"
    if isinstance(exc, openai.APIStatusError):
        return "server_error" if exc.status_code >= 500 else "refused"
    return "invalid_answer"  # the SDK could not read what came back


def _transport_reason(exc: openai.APIConnectionError, url: object, retries: str) -> str:
    """Say whether the server was not reached, or was reached and broke its answer.

    The SDK says only "Connection error."; httpx's error, its cause, says which.
    """
    cause = exc.__cause__
    said = quoted(str(cause) or type(cause).__name__, _DETAIL_CHARS) if cause else _detail(exc)
    if cause is None or isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot reach the model server at {url} ({said}); check OPENAI_BASE_URL"
    if isinstance(cause, httpx.RemoteProtocolError):
        if said == _HEAD_TOO_LONG:
            said = "its status line and headers were longer than plangate reads"
        return (
            f"the model server at {url} did not answer in HTTP ({said}; {retries}); check that "
            "OPENAI_BASE_URL names an OpenAI-compatible HTTP server, not a proxy or another service"
        )
    return (
        f"the connection to the model server at {url} broke while it answered ({said}; "
        f"{retries}); check the server's log and the network to it"
    )


def _asked_to_wait(exc: openai.APIStatusError) -> str:
    """Return how long the server asked to wait, as it said it ('' if it did not say)."""
    headers = exc.response.headers
    for name, unit in (("retry-after", "s"), ("retry-after-ms", "ms")):
        said = printable(quoted(headers.get(name, ""), _WAIT_CHARS))
        if said:  # seconds (or milliseconds), or an HTTP date: quoted as sent
            return f"{said} {unit} ({name})" if said.isdigit() else f"until {said} ({name})"
    return ""


def _retries_taken(exc: openai.OpenAIError, configured: int) -> int:
    """Return how many retries the SDK made: it numbers each attempt in a request header.

    Not always `max_retries`: the SDK does not retry when a server asks it to wait longer
    than a minute, or says not to.
    """
    request = getattr(exc, "request", None)
    taken = request.headers.get("x-stainless-retry-count") if request is not None else None
    return int(taken) if taken is not None and taken.isdigit() else configured


def _detail(exc: openai.OpenAIError) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return quoted(str(message), _DETAIL_CHARS)
