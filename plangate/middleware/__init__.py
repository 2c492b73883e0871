"""The concerns around each message a stage handles, one module each (`plangate.bus.middleware`).

`standard(stage)` is what every consume loop has unless told otherwise. Mapping database
outages (`plangate.middleware.outages`) needs the store, and is added where stages are wired.
"""

from __future__ import annotations

from plangate.bus.middleware import Middleware
from plangate.middleware.fault_injection import FaultInjection
from plangate.middleware.log_fields import LogFields
from plangate.middleware.message_metrics import MessageMetrics
from plangate.middleware.tracing import Tracing

__all__ = ["FaultInjection", "LogFields", "MessageMetrics", "Tracing", "standard"]


def standard(stage: str) -> list[Middleware]:
    """Return the middleware of every stage: log fields, then its span, metrics and faults.

    Log fields are bound outermost and the span opened inside them, so that every line the
    handler logs carries the goal and the trace.
    """
    return [LogFields(), Tracing(), MessageMetrics(stage), FaultInjection()]
