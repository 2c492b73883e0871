"""Telling people a plan waits for them: a JSON POST to `PLANGATE_WEBHOOK_URL` when one is held.

The body has a Slack-compatible `text` with the review link, and the same facts as fields. It is
sent through the one HTTP client (`plangate.http_client`) in a background thread after the
decision is committed, within a short budget: connection failures, 429 and 5xx are retried in it
(a receiver that failed after posting may show the notice twice: better than never), and a slow
or failing webhook is logged (with the goal's id and trace), counted
(`plangate_review_webhook_failures_total`) and never blocks or fails the gate.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

from plangate import metrics
from plangate.http_client import send
from plangate.logs import bound

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class HeldNotice:
    """A plan revision the policy held for a person."""

    goal_id: str
    plan_id: str
    revision: int
    rule: str | None
    reason: str
    summary: str = ""


def review_url(public_url: str, plan_id: str) -> str:
    """Return the link to a plan's review page."""
    return f"{public_url.rstrip('/')}/reviews/{plan_id}"


def held_payload(notice: HeldNotice, public_url: str) -> dict[str, Any]:
    """Return the webhook's JSON body for a held plan."""
    link = review_url(public_url, notice.plan_id)
    by = f"rule `{notice.rule}`" if notice.rule else "the policy"
    what = f": {notice.summary}" if notice.summary else ""
    text = (
        f"Plan revision {notice.revision} of goal {notice.goal_id} is held for review{what}\n"
        f"Held by {by}: {notice.reason}\n<{link}|Review it>"
    )
    fields = asdict(notice)
    fields.pop("summary")
    return {"text": text, **fields, "review_url": link}


class WebhookNotifier:
    """Posts a held notice to a webhook in a daemon thread; failures are only logged.

    `timeout` bounds the whole sending, retries included.
    """

    def __init__(self, url: str, public_url: str, timeout: float = TIMEOUT_SECONDS) -> None:
        self.url = url
        self.public_url = public_url
        self.timeout = timeout

    def __call__(self, notice: HeldNotice) -> threading.Thread:
        """Start sending `notice`; return the sending thread (tests may join it)."""
        # In a copy of this context: its lines carry the goal's id and trace, as the gate's do.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(self.send, notice), name="plangate-webhook", daemon=True
        )
        thread.start()
        return thread

    def send(self, notice: HeldNotice) -> bool:
        """Send `notice` now; return whether the webhook accepted it."""
        if not self.url.startswith(("http://", "https://")):
            log.warning("PLANGATE_WEBHOOK_URL must be an http(s) URL; not notifying")
            return False
        try:
            send(
                "POST",
                self.url,
                service="the review webhook",  # not its URL: a webhook's URL holds its token
                json_body=held_payload(notice, self.public_url),
                hint="check PLANGATE_WEBHOOK_URL",
                deadline=self.timeout,
            )
        except Exception as exc:  # any failure: the gate goes on, an operator reads the log
            metrics.WEBHOOK_FAILURES.inc()
            with bound(goal_id=notice.goal_id, plan_id=notice.plan_id):
                log.warning("the review webhook failed for plan %s: %s", notice.plan_id, exc)
            return False
        return True
