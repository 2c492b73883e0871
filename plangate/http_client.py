"""The one HTTP client: JSON out, bounded answers in, retries within a time budget, clear errors.

The integrations (`plangate.integrations`) and the notice of a held plan (`approval_gate.notify`)
send through it. One `httpx.Client` per process, shared by every thread, keeps connections open
between calls; it is closed at exit (a forked child makes its own). Cookies are never kept: one
receiver's cookie must not travel with the next call. Proxy variables are read when it is made.

Retried, by stamina with its jitter: connection failures, timeouts, HTTP 429 and 5xx. A retry
resends the very same request, headers included, so a write carrying an idempotency key (an
`Idempotency-Key` header, a PagerDuty `dedup_key`) is deduplicated by the receiver even when an
earlier attempt did arrive and only its answer was lost. A `Retry-After` (seconds or an HTTP
date) is waited out when the budget allows, else the call gives up at once saying so. Never
retried: a redirect (never followed either: it could lead past the webhook allowlist) and any
other 4xx, each an error at once.

`PLANGATE_HTTP_TIMEOUT` bounds one attempt (seconds, default 10); `PLANGATE_HTTP_DEADLINE` the
whole call, waits included (default 30); `PLANGATE_HTTP_ATTEMPTS` counts attempts (default 3);
`PLANGATE_HTTP_BACKOFF` is the wait before the first retry (doubled each time, plus up to as
much jitter; default 0.5). Answers are read up to 1 MiB. Whatever a receiver answers is quoted
redacted (`plangate.redaction`): the integrations register their keys when they read them, so
a receiver (or a proxy) that echoes one back gets `[redacted]` quoted instead.
"""

from __future__ import annotations

import atexit
import email.utils
import http.cookiejar
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import stamina

from plangate.current_settings import current_settings
from plangate.errors import ConfigError, OutcomeUnknown, ToolError
from plangate.redaction import redact
from schemas.decoding import JsonRefused, strict_json_loads

MAX_BODY = 1 << 20  # the answers read are small JSON; more is not read
_EXCERPT = 200
_MAX_WAIT = 30.0  # the longest wait between attempts, whatever the backoff has grown to
_HEADERS = {"Accept": "application/json", "User-Agent": "plangate"}


@dataclass(frozen=True)
class HttpSettings:
    """How long to wait for an answer and for a whole call, how often to try (Settings.http_*)."""

    timeout: float
    deadline: float
    attempts: int
    backoff: float


@dataclass(frozen=True)
class Response:
    """A 2xx answer: its status, its body (at most `MAX_BODY` bytes), how many attempts it took."""

    status: int
    body: bytes
    attempts: int
    complete: bool = True

    def json(self, service: str) -> Any:
        """Return the body parsed as JSON (bounded); a ToolError naming `service` if it is not."""
        if not self.complete:
            raise ToolError(
                f"{service} answered HTTP {self.status} with a body over {MAX_BODY} bytes, more "
                "than plangate reads; check that the URL is the service's API"
            )
        try:
            return strict_json_loads(self.body, max_bytes=MAX_BODY)
        except JsonRefused as exc:
            what = "is not JSON" if exc.problem == "syntax" else f"cannot be read ({exc})"
            raise ToolError(
                f"{service} answered HTTP {self.status} with a body that {what}: "
                f"{excerpt(self.body)}"
            ) from None


# Cut off once the request may have been sent whole: waiting for the answer, or mid-answer.
_CUT_OFF_AFTER_SENDING = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


class _Retryable(Exception):
    """An attempt that failed in a way another may not; `last` says how (redacted).

    `retry_after` is how long the receiver asked us to wait before asking again, if it did.
    """

    def __init__(self, last: str, retry_after: float | None = None) -> None:
        self.last = last
        self.retry_after = retry_after
        super().__init__(last)


@dataclass
class _Call:
    """One call's settings and clock: what is left of its budget, and when it may try again."""

    service: str
    hint: str
    settings: HttpSettings
    budget: float
    started: float
    attempts: int = 0
    not_before: float = 0.0
    # A write cut off after its request went out (a read timing out, the connection dropped):
    # the receiver may have acted on it, so giving up is not a failure but an unknown.
    maybe_delivered: bool = False

    def given_up(self, said: str) -> ToolError:
        """Return the error that ends this call: OutcomeUnknown if it may have taken effect."""
        if not self.maybe_delivered:
            return ToolError(said)
        return OutcomeUnknown(
            f"{said}; {self.service} may have received the request (an attempt was cut off "
            "after sending it): check there before settling or trying again"
        )

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def next_wait_at_most(self, attempt: int) -> float:
        # stamina's backoff before attempt n+1, with the most jitter it may add.
        backoff = self.settings.backoff
        return min(_MAX_WAIT, backoff * 2.0 ** (attempt - 1) + backoff)


class HttpClient:
    """A pool of connections with plangate's retry policy; safe to share between threads."""

    def __init__(self) -> None:
        self._client = httpx.Client(headers=_HEADERS, follow_redirects=False)
        # A jar that accepts no domain keeps no cookie (httpx has no switch to turn them off).
        self._client.cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def close(self) -> None:
        """Close every pooled connection."""
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(
        self,
        method: str,
        url: str,
        *,
        service: str,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        hint: str = "",
        deadline: float | None = None,
    ) -> Response:
        """Send one request, retrying as the module says; return the 2xx answer.

        `service` names the receiver in errors; `hint` is added to a refusal (a 4xx) to say what
        to check; `deadline` shortens the call's budget below `PLANGATE_HTTP_DEADLINE`. Text
        quoted from the receiver is redacted.
        """
        if urlsplit(url).scheme not in ("http", "https"):
            raise ToolError(f"{service}: only http and https URLs are supported")
        settings = _settings()
        budget = settings.deadline if deadline is None else min(settings.deadline, deadline)
        call = _Call(service, hint, settings, budget, time.monotonic())
        data = None if json_body is None else json.dumps(json_body, allow_nan=False).encode()
        all_headers = dict(headers or {})
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        try:
            for attempt in stamina.retry_context(
                on=_Retryable,
                attempts=settings.attempts,
                timeout=budget,
                wait_initial=settings.backoff,
                wait_max=_MAX_WAIT,
                wait_jitter=settings.backoff,
            ):
                with attempt:
                    return self._attempt(call, attempt.num, method, url, data, all_headers)
        except _Retryable as exc:  # stamina stopped first: switched off, or by its own clock
            raise _gave_up(call, call.attempts, exc.last) from None
        raise AssertionError("stamina ended its attempts without an answer or an error")

    def _attempt(
        self,
        call: _Call,
        attempt: int,
        method: str,
        url: str,
        data: bytes | None,
        headers: dict[str, str],
    ) -> Response:
        """Make attempt number `attempt`: its answer, a final ToolError, or a _Retryable."""
        call.attempts = attempt
        time.sleep(max(0.0, call.not_before - time.monotonic()))  # a Retry-After's remainder
        timeout = max(0.001, min(call.settings.timeout, call.left()))
        try:
            request = self._client.build_request(
                method, url, content=data, headers=headers, timeout=timeout
            )
            answer = self._client.send(request, stream=True)
            try:
                body, complete = _read_bounded(answer, call)
            finally:
                answer.close()
        except httpx.InvalidURL:
            raise ToolError(f"{call.service}: the URL is not valid") from None
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
            raise ToolError(
                f"{call.service}: the request cannot be sent: {redact(str(exc))}"
            ) from None
        except httpx.DecodingError:
            raise ToolError(
                f"{call.service} answered with a body that cannot be decoded "
                "(its Content-Encoding does not match it)"
            ) from None
        except httpx.TransportError as exc:
            failure = _Retryable(_describe(exc))
            if method != "GET" and isinstance(exc, _CUT_OFF_AFTER_SENDING):
                call.maybe_delivered = True
        else:
            if 200 <= answer.status_code < 300:
                return Response(answer.status_code, body, attempt, complete)
            failure = _judge(call, answer, body)
        raise _retry_or_give_up(call, attempt, failure)


class _Shared:
    """The one client of this process, made on first use."""

    lock = threading.Lock()
    client: HttpClient | None = None
    pid = 0


def shared_client() -> HttpClient:
    """Return this process's client; it is closed at exit, and a forked child makes its own."""
    with _Shared.lock:
        pid = os.getpid()
        if _Shared.client is None or _Shared.pid != pid:
            # A child's inherited connections are its parent's: left alone, never reused.
            _Shared.client, _Shared.pid = HttpClient(), pid
            atexit.register(_close_at_exit, _Shared.client, pid)
        return _Shared.client


def send(
    method: str,
    url: str,
    *,
    service: str,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    hint: str = "",
    deadline: float | None = None,
) -> Response:
    """Send one request through this process's client (see `HttpClient.send`)."""
    return shared_client().send(
        method,
        url,
        service=service,
        json_body=json_body,
        headers=headers,
        hint=hint,
        deadline=deadline,
    )


def excerpt(body: bytes) -> str:
    """Return the start of `body` as one line of text, with every known secret redacted."""
    # Redacted before it is cut, so no prefix of a secret survives at the cut.
    text = redact(" ".join(body.decode("utf-8", errors="replace").split()))
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


def retry_after_seconds(value: str | None) -> float | None:
    """Return how long a `Retry-After` header asks to wait (seconds or an HTTP date), if readable.

    A date in the past asks for no wait.
    """
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _settings() -> HttpSettings:
    try:
        settings = current_settings()
    except ConfigError as exc:
        raise ToolError(str(exc)) from None
    return HttpSettings(
        settings.http_timeout, settings.http_deadline, settings.http_attempts, settings.http_backoff
    )


def _read_bounded(answer: httpx.Response, call: _Call) -> tuple[bytes, bool]:
    """Return at most MAX_BODY bytes of the body, and whether that was all of it."""
    body = bytearray()
    for chunk in answer.iter_bytes():
        body += chunk
        if len(body) > MAX_BODY:
            return bytes(body[:MAX_BODY]), False
        if call.left() <= 0:
            # Each wait for a chunk is bounded; a trickle of chunks is bounded here.
            raise httpx.ReadTimeout("the call's time ran out while reading the answer")
    return bytes(body), True


def _judge(call: _Call, answer: httpx.Response, body: bytes) -> _Retryable:
    """Return a non-2xx answer as a _Retryable, or raise it as a final ToolError."""
    status = answer.status_code
    if 300 <= status < 400:
        raise ToolError(
            f"{call.service} answered HTTP {status} (a redirect); redirects are not followed: "
            f"use the final URL{_pointing_to(answer)}"
        )
    if status == 429 or status >= 500:
        return _Retryable(
            f"HTTP {status}: {excerpt(body)}",
            retry_after_seconds(answer.headers.get("Retry-After")),
        )
    advice = f"; {call.hint}" if call.hint else ""
    raise ToolError(f"{call.service} refused the request: HTTP {status}: {excerpt(body)}{advice}")


def _retry_or_give_up(call: _Call, attempt: int, failure: _Retryable) -> Exception:
    """Return `failure` to be retried, or the final ToolError if no attempt may follow."""
    if attempt >= call.settings.attempts:
        return _gave_up(call, attempt, failure.last)
    left = call.left()
    asked = failure.retry_after or 0.0
    if failure.retry_after is not None and asked >= left:
        return ToolError(
            f"{call.service} asked to be called again in {asked:g} s, later than this call can "
            f"wait ({max(left, 0):.1f} s left of {call.budget:g} s); last: {failure.last}; "
            "try again later, or raise PLANGATE_HTTP_DEADLINE"
        )
    if call.next_wait_at_most(attempt) >= left:
        return call.given_up(
            f"{call.service} did not answer successfully within {call.budget:g} s "
            f"({attempt} attempt(s)); last: {failure.last}; check that it is reachable "
            "(PLANGATE_HTTP_DEADLINE bounds a call, PLANGATE_HTTP_TIMEOUT an attempt)"
        )
    call.not_before = time.monotonic() + asked
    return failure


def _gave_up(call: _Call, attempts: int, last: str) -> ToolError:
    return call.given_up(
        f"{call.service} did not answer successfully after {attempts} attempt(s); "
        f"last: {last}; check that it is reachable (PLANGATE_HTTP_TIMEOUT, "
        "PLANGATE_HTTP_ATTEMPTS and PLANGATE_HTTP_DEADLINE tune the waiting)"
    )


def _pointing_to(answer: httpx.Response) -> str:
    # Only scheme and host: a path may carry a token (a Slack webhook's does).
    try:
        target = answer.url.join(answer.headers.get("Location", ""))
    except httpx.InvalidURL:
        return ""
    where = redact(f"{target.scheme}://{target.netloc.decode()}")
    return f" (it points to {where})" if target.host else ""


def _describe(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return redact(str(exc) or type(exc).__name__)


def _close_at_exit(client: HttpClient, pid: int) -> None:
    if os.getpid() == pid:  # a forked child's copy of its parent's handler leaves it alone
        client.close()
