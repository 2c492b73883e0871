"""What the executor tells a tool about the call it is making."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolContext:
    """The goal, plan and step a call belongs to, and the key that makes a write happen once.

    The executor derives `idempotency_key` from the goal, the step's id and tool, and the
    arguments it is called with, so a re-run of the step, or a retry's revision calling it
    alike, carries the same key, and a call with other values another; write tools pass it
    downstream (PagerDuty `dedup_key`, an `Idempotency-Key` header). `timeout` is the call's
    deadline in seconds: the executor stops waiting then, so a tool doing I/O should give up by
    then too.
    """

    goal_id: str
    plan_id: str
    step_id: str
    idempotency_key: str
    attempt: int = 1
    timeout: float = 60.0
    preview: bool = False  # a reviewer's dry run of a read step: nothing of the plan runs
