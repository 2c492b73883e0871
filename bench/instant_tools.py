"""The seed example's three tools, answering at once, for `bench/pipeline.py`.

Same names, argument models, output types, effects and idempotency as `plangate.demo.tools`,
so the default playbook plans the same three steps and the same policy inputs apply; but no
file, lock or fsync: the benchmark measures plangate, not the demo's notification log. The
write step (`notify_oncall`) still goes through the executor's claim and checkpoint path,
which does not depend on what the tool does. Loaded with `PLANGATE_TOOLS=instant_tools` and
this folder on `PYTHONPATH`.
"""

from __future__ import annotations

from pydantic import BaseModel

from plangate.tools import ToolContext, tool

OPEN_TICKETS = 128  # above the SLA, so the `when` holds and the write step runs
SLA_THRESHOLD = 100


class Notification(BaseModel):
    """A page sent to on-call (here: only an id derived from the idempotency key)."""

    notification_id: str
    deduplicated: bool


@tool(effect="read", idempotent=True, tags=("tickets",))
def ticket_count() -> int:
    """Return how many support tickets are open now."""
    return OPEN_TICKETS


@tool(effect="read", idempotent=True)
def sla_threshold() -> int:
    """Return the most open tickets the SLA allows."""
    return SLA_THRESHOLD


@tool(effect="write", idempotent=True, tags=("notify",))
def notify_oncall(message: str, context: ToolContext) -> Notification:
    """Page the on-call engineer with `message`, at most once per idempotency key."""
    return Notification(notification_id=context.idempotency_key, deduplicated=False)
