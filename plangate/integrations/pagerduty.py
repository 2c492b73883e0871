"""`pagerduty_trigger`: open a PagerDuty incident (Events API v2), once per step.

The step's idempotency key is the event's `dedup_key`: PagerDuty folds every trigger with the
same key into one open incident, so a step re-run after a crash pages nobody twice.
`PAGERDUTY_ROUTING_KEY` (the service's Events API v2 integration key) is a secret: it goes in
the request body and nowhere else; it is registered with `plangate.redaction` as it is read,
so no output, error or log line quotes it, even when PagerDuty (or a proxy) echoes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from plangate.errors import ToolError
from plangate.http_client import excerpt, send
from plangate.redaction import register_secret
from plangate.tools import ToolContext, tool

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
MAX_SUMMARY = 1024  # PagerDuty refuses a longer summary

Severity = Literal["critical", "error", "warning", "info"]


class PagerDutySettings(BaseSettings):
    """Where to send events, and the routing key that says which service they page."""

    model_config = SettingsConfigDict(env_prefix="PAGERDUTY_", extra="ignore")

    routing_key: SecretStr | None = None
    events_url: str = EVENTS_URL


class PagerDutyEvent(BaseModel):
    """A trigger PagerDuty accepted: the key it deduplicates on and what it said."""

    dedup_key: str
    status: str


def is_configured() -> bool:
    """Return whether a routing key is set, so pages can go to PagerDuty."""
    key = PagerDutySettings().routing_key
    return key is not None and bool(key.get_secret_value().strip())


def trigger(
    summary: str, context: ToolContext, severity: Severity = "error", source: str = "plangate"
) -> PagerDutyEvent:
    """Send a trigger event deduplicated by the step's idempotency key; return what PD said."""
    settings = PagerDutySettings()
    routing_key = settings.routing_key.get_secret_value().strip() if settings.routing_key else ""
    register_secret(routing_key)
    if not routing_key:
        raise ToolError(
            "PAGERDUTY_ROUTING_KEY is not set; set it to the Events API v2 integration key "
            "of the PagerDuty service to page"
        )
    event = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": context.idempotency_key,
        "payload": {
            "summary": summary[:MAX_SUMMARY],
            "source": source,
            "severity": severity,
            "custom_details": {
                "goal_id": context.goal_id,
                "plan_id": context.plan_id,
                "step_id": context.step_id,
            },
        },
    }
    answer = send(
        "POST",
        settings.events_url,
        service="PagerDuty",
        json_body=event,
        hint="check that PAGERDUTY_ROUTING_KEY is the service's Events API v2 integration key",
    )
    reply = answer.json("PagerDuty")
    said = reply.get("status") if isinstance(reply, dict) else None
    # PagerDuty echoes the dedup_key it was sent; ours is reported, and its words are scrubbed
    # in case a proxy or a test double echoes the request back.
    return PagerDutyEvent(
        dedup_key=context.idempotency_key,
        status=excerpt(str(said or "success").encode()),
    )


def _preview(args: Mapping[str, Any]) -> str:
    return f"page on-call in PagerDuty ({args.get('severity', 'error')}): {args.get('summary')!r}"


@tool(effect="write", idempotent=True, tags=("notify", "pagerduty"), preview=_preview)
def pagerduty_trigger(
    summary: Annotated[str, Field(min_length=1, max_length=MAX_SUMMARY)],
    context: ToolContext,
    severity: Severity = "error",
    source: Annotated[str, Field(min_length=1, max_length=255)] = "plangate",
) -> PagerDutyEvent:
    """Open a PagerDuty incident saying `summary`; at most one per step of an approved plan."""
    return trigger(summary, context, severity, source)
