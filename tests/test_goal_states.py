"""The goal state machine: one table of states and moves; every other move is refused."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from plangate.store import GoalRow, open_store
from plangate.store.goals import ensure_goal, transition
from schemas import GoalSubmitted
from schemas.goal_states import (
    STALLED_WHEN_IDLE,
    TERMINAL,
    TRANSITIONS,
    WAITING_FOR_PERSON,
    GoalStatus,
    Mover,
    TransitionRefused,
    check_transition,
)

STATES = set(typing.get_args(GoalStatus))
MOVERS = set(typing.get_args(Mover))


def test_the_table_names_every_state_and_only_states_and_movers() -> None:
    assert set(TRANSITIONS) == STATES
    for targets in TRANSITIONS.values():
        assert set(targets) <= STATES
        assert all(movers and movers <= MOVERS for movers in targets.values())


def test_the_sets_of_states_are_read_from_the_one_table() -> None:
    """Ended, stalled and waiting are disjoint; every state is one of them; an ended goal moves
    only to a new revision (feedback, or an operator's retry), a state nothing leaves is ended."""
    assert TERMINAL | STALLED_WHEN_IDLE | WAITING_FOR_PERSON == STATES
    assert not TERMINAL & STALLED_WHEN_IDLE
    assert not TERMINAL & WAITING_FOR_PERSON
    for state in TERMINAL:
        assert set(TRANSITIONS[state]) <= {"proposed", "plan_failed", "cancelled", "submitted"}
        assert TRANSITIONS[state].get("submitted", {"operator"}) == {"operator"}
    assert {state for state, targets in TRANSITIONS.items() if not targets} <= TERMINAL


def test_every_unended_goal_may_be_cancelled_by_an_operator() -> None:
    for state in STATES - TERMINAL:
        check_transition("g", state, "cancelled", "operator")


@pytest.mark.parametrize(
    ("current", "target", "by"),
    [
        ("completed", "running", "executor"),  # an outcome is never undone
        ("held", "approved", "gate"),  # a hold is released by a person, not by the gate itself
        ("held", "running", "executor"),  # nothing runs that was not approved
        ("proposed", "approved", "person"),  # a person decides held plans, not proposals
        ("expired", "approved", "person"),
        ("cancelled", "proposed", "planner"),
    ],
)
def test_a_move_the_table_does_not_list_is_refused_saying_what_is_allowed(
    current: str, target: str, by: Mover
) -> None:
    with pytest.raises(TransitionRefused, match=f"cannot go from {current} to {target}"):
        check_transition("g1", current, target, by)


def test_transition_refuses_a_move_and_leaves_the_goal_as_it_was(tmp_path: Path) -> None:
    """Given a stored goal that completed,
    When anything asks to move it back to running,
    Then TransitionRefused says so, and the goal is still completed.
    """
    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    try:
        with store.session() as session:
            ensure_goal(session, GoalSubmitted(goal_id="g1", text="goal"), {})
            session.get_one(GoalRow, "g1").status = "completed"
        with pytest.raises(TransitionRefused, match="it has ended"), store.session() as session:
            transition(session, "g1", "running", by="executor", actor="executor")
        with store.session() as session:
            assert session.get_one(GoalRow, "g1").status == "completed"
    finally:
        store.close()
