"""What the executor tells a tool about the call it is making."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolContext:
    """The goal, plan and step a call belongs to, and the key that makes a write happen once.

    The executor derives `idempotency_key` from the plan hash and the step id, so a re-run of the
    same step of the same approved plan carries the same key; write tools pass it downstream
    (PagerDuty `dedup_key`, an `Idempotency-Key` header).
    """

    goal_id: str
    plan_id: str
    step_id: str
    idempotency_key: str
    attempt: int = 1
