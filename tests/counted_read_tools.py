"""A read that notes each call in the file `COUNTED_READS`, and a write that uses its answer."""

from __future__ import annotations

import os

from plangate.tools import ToolContext, tool


@tool(effect="read", idempotent=True)
def order_total(order_id: str, context: ToolContext) -> int:
    """Return an order's total; each call is noted, a dry run's too."""
    with open(os.environ["COUNTED_READS"], "a", encoding="utf-8") as calls:
        calls.write(f"preview={context.preview}\n")
    return 42


@tool(effect="write", idempotent=True)
def refund(order_id: str, amount: int) -> str:
    """Refund `amount` on an order."""
    return f"refunded {amount} on {order_id}"
