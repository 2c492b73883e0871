"""The review API of a running `plangate serve`, as the CLI calls it (`--server URL`).

Like `kubectl` or `gh`: the command holds a reviewer token and sends it as a bearer token; the
server decides who that is and what they may do. Each refusal becomes the plangate error the
store path raises for the same thing, so the exit codes match (2: fix your input, 1: refused).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from plangate import __version__
from plangate.errors import (
    NO_ROUTE,
    ConfigError,
    Conflict,
    Forbidden,
    InputInvalid,
    NotFound,
    PlangateError,
    PlanInvalid,
    PlanProblem,
    ServerUnavailable,
)


class ReviewApi:
    """`/api/v1/reviews` of one server, called with one reviewer's token."""

    def __init__(self, server: str, token: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        try:
            self._http = httpx.Client(
                base_url=self.server,
                headers={
                    "Authorization": f"Bearer {token}",
                    "User-Agent": f"plangate/{__version__}",
                },
                timeout=timeout,
                # Retries only connections that failed to open: no request was sent, so a
                # decision is never sent twice.
                transport=httpx.HTTPTransport(retries=2),
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise ConfigError(f"--server {server!r} is not a URL ({exc})") from None

    def __enter__(self) -> ReviewApi:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        """GET `path` under /api/v1/reviews; return the JSON answer."""
        return self._send("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` as JSON to `path` under /api/v1/reviews; return the JSON answer."""
        return self._send("POST", path, body)

    def cancel_goal(self, goal_id: str, reason: str) -> Any:
        """POST to /api/v1/goals/{goal_id}/cancel; return the goal's state."""
        return self._send("POST", f"/{quote(goal_id, safe='')}/cancel", {"reason": reason}, "goals")

    def retry_goal(self, goal_id: str, reason: str) -> Any:
        """POST to /api/v1/goals/{goal_id}/retry; return the goal's state."""
        return self._send("POST", f"/{quote(goal_id, safe='')}/retry", {"reason": reason}, "goals")

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, under: str = "reviews"
    ) -> Any:
        url = f"/api/v1/{under}{path}"
        try:
            response = self._http.request(method, url, json=body)
        except httpx.UnsupportedProtocol:
            raise ConfigError(
                f"--server {self.server!r} must start with http:// or https://"
            ) from None
        except httpx.HTTPError as exc:
            raise ServerUnavailable(
                f"cannot reach plangate serve at {self.server} ({type(exc).__name__}: {exc}); "
                "check --server (PLANGATE_SERVER_URL) and that the server runs"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and body is not None:
            return body
        # Serve always says why; a route it does not have (another server's bare "Not Found"
        # too) means the URL is not a serve's root.
        said = body.get("error", "Not Found") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or not isinstance(said, str)
            or said == "Not Found"
            or said.startswith(NO_ROUTE)
        ):
            raise ConfigError(
                f"{self.server}{url} answered {response.status_code} "
                f"{response.reason_phrase}, not as plangate serve answers: give --server "
                "(PLANGATE_SERVER_URL) the root URL of a plangate serve, without a path"
            )
        raise _refusal(response, body)


def _refusal(response: httpx.Response, body: dict[str, Any]) -> PlangateError:
    """Return the error a refusal stands for, with the server's own sentence."""
    message = str(body.get("error") or response.text[:200] or response.reason_phrase)
    status = response.status_code
    if status == 401:
        return ConfigError(
            f"the server refused the reviewer token: {message}; check PLANGATE_REVIEWER_TOKEN "
            "or --token-file"
        )
    if status == 422 and body.get("problems"):
        return PlanInvalid(
            [
                PlanProblem(str(p.get("code")), str(p.get("message")), p.get("step_id"))
                for p in body["problems"]
            ]
        )
    errors: dict[int, PlangateError] = {
        403: Forbidden(message, role=""),
        404: NotFound(message),
        409: Conflict(message),
        422: InputInvalid(message),
    }
    if status in errors:
        return errors[status]
    return ServerUnavailable(f"plangate serve answered {status}: {message}")
