"""The seed example's three tools, each waiting 50 ms as an API call would, for `scaling.py`.

Same names, arguments, outputs and effects as `instant_tools.py` (so the default playbook plans
the same three steps), but I/O-bound: a step's time is the wait, not CPU, so that executor
processes added should add throughput until something shared (the store) holds them back.
"""

from __future__ import annotations

import time

from instant_tools import OPEN_TICKETS, SLA_THRESHOLD, Notification

from plangate.tools import ToolContext, tool

WAIT_SECONDS = 0.05


@tool(effect="read", idempotent=True, tags=("tickets",))
def ticket_count() -> int:
    """Return how many support tickets are open now."""
    time.sleep(WAIT_SECONDS)
    return OPEN_TICKETS


@tool(effect="read", idempotent=True)
def sla_threshold() -> int:
    """Return the most open tickets the SLA allows."""
    time.sleep(WAIT_SECONDS)
    return SLA_THRESHOLD


@tool(effect="write", idempotent=True, tags=("notify",))
def notify_oncall(message: str, context: ToolContext) -> Notification:
    """Page the on-call engineer with `message`, at most once per idempotency key."""
    time.sleep(WAIT_SECONDS)
    return Notification(notification_id=context.idempotency_key, deduplicated=False)
