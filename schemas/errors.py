"""The root of plangate's error hierarchy, and the errors of the contract itself.

Every error plangate raises derives from :class:`PlangateError` and says what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass


class PlangateError(Exception):
    """Base class of every error plangate raises on purpose."""


@dataclass(frozen=True)
class PlanProblem:
    """One reason a plan is invalid, tied to the step it concerns (None: the whole plan)."""

    code: str
    message: str
    step_id: str | None = None

    def __str__(self) -> str:
        where = f"step {self.step_id!r}" if self.step_id is not None else "plan"
        return f"{where}: {self.message} [{self.code}]"


class PlanInvalid(PlangateError):
    """A plan failed validation; it must not cross a stage boundary."""

    def __init__(self, problems: list[PlanProblem]) -> None:
        self.problems = problems
        listed = "; ".join(str(p) for p in problems)
        super().__init__(f"the plan is invalid: {listed}")


class MessageRejected(PlangateError):
    """A message on the bus cannot be handled; it goes to the dead-letter queue with `reason`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
