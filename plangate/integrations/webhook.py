"""`webhook_post`: POST JSON to an allowed URL, with the step's idempotency key as a header.

A plan is data an LLM wrote, so it must not choose where the executor sends requests: only
hosts listed in `PLANGATE_WEBHOOK_ALLOWED_HOSTS` (comma-separated `host` or `host:port`) are
reached; anything else is refused before a connection is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel

from plangate.current_settings import current_settings
from plangate.errors import ToolError
from plangate.http_client import send
from plangate.tools import ToolContext, tool

ALLOWED_HOSTS_VARIABLE = "PLANGATE_WEBHOOK_ALLOWED_HOSTS"


class WebhookDelivery(BaseModel):
    """A webhook the receiver accepted."""

    status: int
    idempotency_key: str
    attempts: int


def _preview(args: Mapping[str, Any]) -> str:
    try:
        return f"POST JSON to {_where(urlsplit(str(args.get('url', ''))))}"
    except ValueError:
        return "POST JSON to a malformed URL (the call will be refused)"


@tool(effect="write", idempotent=True, tags=("webhook",), preview=_preview)
def webhook_post(url: str, payload: dict[str, Any], context: ToolContext) -> WebhookDelivery:
    """POST `payload` as JSON to `url`; the receiver deduplicates by the Idempotency-Key header."""
    target = check_allowed(url)
    answer = send(
        "POST",
        url,
        service=f"webhook {_where(target)}",
        json_body=payload,
        headers={"Idempotency-Key": context.idempotency_key},
    )
    return WebhookDelivery(
        status=answer.status, idempotency_key=context.idempotency_key, attempts=answer.attempts
    )


def check_allowed(url: str) -> SplitResult:
    """Return `url` split, if its host is allowed; a ToolError saying how to allow it if not."""
    try:
        target = urlsplit(url)
        port = target.port
    except ValueError:
        raise ToolError("webhook URL is malformed (a bad host or port)") from None
    if target.scheme not in ("http", "https") or not target.hostname:
        raise ToolError("webhook URL must be an absolute http or https URL")
    if target.username is not None or target.password is not None:
        # Credentials in a URL end up in plans, logs and reviews; receivers must not need them.
        raise ToolError(f"webhook URL for {target.hostname} must not carry a user or password")
    host = target.hostname.rstrip(".")
    port = port or (443 if target.scheme == "https" else 80)
    allowed = _allowed_hosts()
    if (host, None) in allowed or (host, port) in allowed:
        return target
    listed = current_settings().webhook_allowed_hosts.strip() or "unset"
    raise ToolError(
        f"webhook host {host!r} is not allowed ({ALLOWED_HOSTS_VARIABLE} is {listed}); "
        f"an operator can allow it by adding it to {ALLOWED_HOSTS_VARIABLE} "
        f"(comma-separated host or host:port, e.g. {ALLOWED_HOSTS_VARIABLE}={host})"
    )


def _allowed_hosts() -> set[tuple[str, int | None]]:
    allowed: set[tuple[str, int | None]] = set()
    for entry in current_settings().webhook_allowed_hosts.split(","):
        if not entry.strip():
            continue
        # Parsed as a URL's authority, so `[::1]:8080` and `host:port` split as they should.
        parts = urlsplit("//" + entry.strip())
        try:
            port = parts.port
        except ValueError:
            continue  # a malformed entry allows nothing
        if parts.hostname:
            allowed.add((parts.hostname.rstrip("."), port))
    return allowed


def _where(target: SplitResult) -> str:
    # Only scheme and host: webhook URLs often carry a secret token in their path.
    return f"{target.scheme}://{target.netloc.rpartition('@')[2]}" if target.netloc else "?"
