"""One small HTTP client for the integrations: JSON in and out, bounded retries, clear errors.

Retries resend the very same request, headers included, so a write carrying an idempotency key
(an `Idempotency-Key` header, a PagerDuty `dedup_key`) is deduplicated by the receiver even
when an earlier attempt did arrive and only its answer was lost.

Whatever a receiver answers is quoted redacted (`plangate.redaction`): the integrations register
their keys there when they read them, so a receiver (or a proxy) that echoes one back gets
`[redacted]` quoted instead.

Timeouts and retries come from `PLANGATE_HTTP_TIMEOUT` (seconds per attempt, default 10),
`PLANGATE_HTTP_ATTEMPTS` (default 3) and `PLANGATE_HTTP_BACKOFF` (seconds before the first
retry, doubled each time, default 0.5).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from plangate.errors import ToolError
from plangate.redaction import redact
from schemas.decoding import JsonRefused, strict_json_loads

# Asked again later, these may well succeed; any other 4xx will not.
_RETRYABLE_4XX = frozenset({408, 429})
_MAX_BODY = 1 << 20  # the integrations read small JSON answers; a bigger one is cut here
_EXCERPT = 200
_USER_AGENT = "plangate"


class HttpSettings(BaseSettings):
    """How long to wait for an answer and how often to try."""

    model_config = SettingsConfigDict(env_prefix="PLANGATE_HTTP_", extra="ignore")

    timeout: float = Field(default=10.0, gt=0, le=300)
    attempts: int = Field(default=3, ge=1, le=10)
    backoff: float = Field(default=0.5, ge=0, le=30)


@dataclass(frozen=True)
class Response:
    """A 2xx answer: its status, its body, and how many attempts it took."""

    status: int
    body: bytes
    attempts: int

    def json(self, service: str) -> Any:
        """Return the body parsed as JSON (bounded); a ToolError naming `service` if it is not."""
        try:
            return strict_json_loads(self.body, max_bytes=_MAX_BODY)
        except JsonRefused as exc:
            what = "is not JSON" if exc.problem == "syntax" else f"cannot be read ({exc})"
            raise ToolError(
                f"{service} answered HTTP {self.status} with a body that {what}: "
                f"{excerpt(self.body)}"
            ) from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead anywhere, past the webhook allowlist; a 3xx is reported instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def send(
    method: str,
    url: str,
    *,
    service: str,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    hint: str = "",
) -> Response:
    """Send one request, retrying 5xx, 408, 429 and network failures; return the 2xx answer.

    `service` names the receiver in errors; `hint` is added to a refusal (a 4xx) to say what
    to check. Text quoted from the receiver is redacted.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise ToolError(f"{service}: only http and https URLs are supported")
    try:
        settings = HttpSettings()
    except ValidationError as exc:
        error = exc.errors()[0]
        variable = "PLANGATE_HTTP_" + "_".join(str(part) for part in error["loc"]).upper()
        raise ToolError(f"{variable}: {error['msg']}") from None
    data = None if json_body is None else json.dumps(json_body, allow_nan=False).encode()
    all_headers = {"Accept": "application/json", "User-Agent": _USER_AGENT, **(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    last = ""
    for attempt in range(1, settings.attempts + 1):
        if attempt > 1:
            time.sleep(settings.backoff * 2 ** (attempt - 2))
        request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
        try:
            with _OPENER.open(request, timeout=settings.timeout) as answer:
                return Response(answer.status, answer.read(_MAX_BODY), attempt)
        except urllib.error.HTTPError as exc:
            with exc:
                status, body = exc.code, exc.read(_MAX_BODY)
            _raise_if_final(service, status, body, hint)
            last = f"HTTP {status}: {excerpt(body)}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            last = redact(_describe_failure(exc))
    raise ToolError(
        f"{service} did not answer successfully after {settings.attempts} attempt(s); "
        f"last: {last}; check that it is reachable (PLANGATE_HTTP_TIMEOUT, "
        "PLANGATE_HTTP_ATTEMPTS tune the waiting)"
    )


def excerpt(body: bytes) -> str:
    """Return the start of `body` as one line of text, with every known secret redacted."""
    # Redacted before it is cut, so no prefix of a secret survives at the cut.
    text = redact(" ".join(body.decode("utf-8", errors="replace").split()))
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


def _raise_if_final(service: str, status: int, body: bytes, hint: str) -> None:
    if 300 <= status < 400:
        raise ToolError(
            f"{service} answered HTTP {status} (a redirect); redirects are not followed: "
            "use the final URL"
        )
    if 400 <= status < 500 and status not in _RETRYABLE_4XX:
        advice = f"; {hint}" if hint else ""
        raise ToolError(f"{service} refused the request: HTTP {status}: {excerpt(body)}{advice}")


def _describe_failure(exc: Exception) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason) or type(reason).__name__
