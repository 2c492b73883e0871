"""What a run's `run plan` span says: a run resumed from an earlier one, and how the run ended.

A run taken over from an executor that died (or handed back as it stopped) is marked
`plangate.resumed`, with the steps the store already held: those are not run again. It is
said as the run first acts (`Resumption`), not as it starts: a copy of the message that finds
the earlier run still live defers to it, and takes nothing over. A run
whose goal an operator cancelled is no error: it is marked `plangate.cancelled`, with who
cancelled it. A failed run, or one paused for a person, is an error, so that a viewer's
search for errors finds it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Sequence

from opentelemetry.trace import Span, StatusCode

from plangate.bus import Envelope
from schemas import Plan

# An executor that died mid-run, or one that stopped and handed the run back: the run goes on
# here, from what the store recorded of it. A copy of the approval (the goal published twice,
# a redelivery) that reached two executors at once reads the same from here: the first's reads
# recorded as this one calls its first tool. Its writes' claims keep each write to one call.
RESUMED = (
    "resumed a run another executor started (it died, stopped, or went silent past its lease; "
    "or it still runs a copy of the same approval, and no write runs twice)"
)
PAUSED = "a write may or may not have happened: the run waits for a person to settle it"
FAILED = "the run failed"
log = logging.getLogger(__name__)


def say_resumed(span: Span, plan: Plan, recorded: Collection[str]) -> None:
    """Say, on the span and in the log, that the run goes on from an earlier one that stopped.

    With what the store held: the steps already recorded, which are not run again. Not the
    earlier executor's identity: the store does not keep which process ran a run.
    """
    done = sorted(recorded)
    span.set_attribute("plangate.resumed", True)
    span.set_attribute("plangate.resumed.steps_recorded", done)
    span.add_event(RESUMED, {"plangate.resumed.steps_recorded": done})
    log.info(
        "goal %s: %s (plan %s); steps already recorded, not run again: %s",
        plan.goal_id,
        RESUMED,
        plan.plan_id,
        ", ".join(done) or "none",
        extra={"goal_id": plan.goal_id, "plan_id": plan.plan_id, "steps_recorded": done},
    )


class Resumption:
    """Says a run resumed an earlier one (`say_resumed`), once, as it first acts.

    That is as it calls its first tool, or ends the run without one. Not as it starts: a copy
    of the message that reached a second executor while the first still ran the plan (RabbitMQ
    gave it out again as its consumer_timeout closed a channel) finds a step claimed by that
    live run, and comes back later (`Retry`); it said it had resumed a run another executor
    left. Called from the run's step threads too.
    """

    def __init__(self, span: Span, plan: Plan, recorded: Collection[str]) -> None:
        self._span = span
        self._plan = plan
        self._recorded = recorded
        self._lock = threading.Lock()
        self._said = False

    def __call__(self) -> None:
        """Say it, unless it was said already."""
        with self._lock:
            if self._said:
                return
            self._said = True
        say_resumed(self._span, self._plan, self._recorded)


def unsaid() -> None:
    """Say nothing as a run first acts: it resumes no earlier run."""


def mark_outcome(span: Span, outcome: Sequence[Envelope]) -> None:
    """Say on the span how the run ended, by the message its end publishes."""
    by_kind = {envelope.routing_key: envelope for envelope in outcome}
    if "execution.failed" in by_kind:
        span.set_status(StatusCode.ERROR, FAILED)
    elif "execution.paused" in by_kind:  # the trace an alert leads to read as healthy
        span.set_status(StatusCode.ERROR, PAUSED)
    elif (cancelled := by_kind.get("execution.cancelled")) is not None:
        said = json.loads(cancelled.body)  # our own message, encoded just now
        span.set_attribute("plangate.cancelled", True)
        if said.get("cancelled_by"):
            span.set_attribute("plangate.cancelled_by", str(said["cancelled_by"]))
        span.add_event("goal cancelled", {"reason": str(said.get("reason", ""))})
