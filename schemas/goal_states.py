"""The goal state machine: every state a goal can be in, and every move, with who may make it.

Everything that asks whether a goal has ended, is stalled, or waits for a person asks here;
`plangate.store.goals.transition` refuses any move this table does not list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from schemas.errors import PlangateError

GoalStatus = Literal[
    "submitted",  # accepted; the planner has not proposed a plan yet
    "proposed",  # a plan revision waits for the gate
    "held",  # the gate holds it for a person
    "approved",  # released (by policy, or a person's approval the gate is signing)
    "running",  # an executor runs it
    "needs_attention",  # a step may or may not have happened: a person settles it
    "completed",
    "failed",
    "plan_failed",
    "denied",
    "rejected",
    "expired",
    "cancelled",
]
Mover = Literal["planner", "gate", "executor", "person", "operator"]
"""Who moves a goal: a stage, a reviewer deciding a plan, or an operator steering goals."""

_OPERATOR: frozenset[Mover] = frozenset({"operator"})


def _moves(**targets: frozenset[Mover]) -> Mapping[str, frozenset[Mover]]:
    return targets  # the names are states: tests/test_goal_states.py checks every one


PLANNER: frozenset[Mover] = frozenset({"planner"})
GATE: frozenset[Mover] = frozenset({"gate"})
EXECUTOR: frozenset[Mover] = frozenset({"executor"})
PERSON: frozenset[Mover] = frozenset({"person"})

TRANSITIONS: Mapping[str, Mapping[str, frozenset[Mover]]] = {
    "submitted": _moves(proposed=PLANNER, plan_failed=PLANNER, cancelled=_OPERATOR),
    "proposed": _moves(approved=GATE, held=GATE, denied=GATE, cancelled=_OPERATOR),
    "held": _moves(
        approved=PERSON,  # a person's approval, handed to the gate to sign
        rejected=PERSON,
        proposed=PERSON,  # an edit: a new revision for the gate
        expired=GATE,
        cancelled=_OPERATOR,
    ),
    "approved": _moves(
        running=EXECUTOR,
        failed=EXECUTOR,  # the gate's own approval refused (an untrusted key, expired)
        held=GATE,  # a person's approval the hold does not allow: withdrawn
        cancelled=_OPERATOR,
    ),
    "running": _moves(
        completed=EXECUTOR, failed=EXECUTOR, needs_attention=EXECUTOR, cancelled=_OPERATOR
    ),
    "needs_attention": _moves(approved=PERSON, cancelled=_OPERATOR),  # settled: the run resumes
    # Feedback makes a new revision: a rejection, or (if configured) a failed run.
    # (Cancelling one stops that.)
    "rejected": _moves(proposed=PLANNER, plan_failed=PLANNER, cancelled=_OPERATOR),
    # An operator's retry sends a failed, expired or unplannable goal back to the planner.
    "failed": _moves(
        proposed=PLANNER, plan_failed=PLANNER, cancelled=_OPERATOR, submitted=_OPERATOR
    ),
    "completed": {},
    "plan_failed": _moves(submitted=_OPERATOR),
    "denied": {},
    "expired": _moves(submitted=_OPERATOR),
    "cancelled": {},
}

TERMINAL: frozenset[str] = frozenset(
    {"completed", "failed", "plan_failed", "denied", "rejected", "expired", "cancelled"}
)
"""States in which nothing more happens unless the planner is asked for a new revision."""


def cancellable(status: str) -> bool:
    """Return whether an operator may still cancel a goal in `status`."""
    return "operator" in TRANSITIONS.get(status, {}).get("cancelled", frozenset())


def ended_for_good(status: str) -> bool:
    """Return whether a goal in `status` has ended and no stage or reviewer moves it again.

    Completed, denied, cancelled; unplannable and expired too, which only an operator's retry
    sends back. Not a rejected or failed goal: the planner may revise its plan.
    """
    moves = TRANSITIONS.get(status, {}).values()
    return status in TERMINAL and not any(movers - _OPERATOR for movers in moves)


STALLED_WHEN_IDLE: frozenset[str] = frozenset({"submitted", "proposed", "approved", "running"})
"""States a stage is working on: left unchanged past a deadline, the reconciler steps in."""
WAITING_FOR_PERSON: frozenset[str] = frozenset({"held", "needs_attention"})
"""States that wait for a person (and never for the reconciler)."""


class TransitionRefused(PlangateError):
    """A goal was asked to move in a way the state machine does not allow."""

    def __init__(self, goal_id: str, current: str, target: str, by: str) -> None:
        allowed = ", ".join(
            f"{state} (by {'/'.join(sorted(movers))})"
            for state, movers in TRANSITIONS.get(current, {}).items()
        )
        super().__init__(
            f"goal {goal_id} cannot go from {current} to {target} (asked by {by}); from "
            f"{current} it may go to {allowed or 'nowhere: it has ended'}"
        )
        self.goal_id, self.current, self.target, self.by = goal_id, current, target, by


def check_transition(goal_id: str, current: str, target: str, by: Mover) -> None:
    """Refuse a move the table does not list for this mover (TransitionRefused)."""
    movers = TRANSITIONS.get(current, {}).get(target)
    if movers is None or by not in movers:
        raise TransitionRefused(goal_id, current, target, by)
