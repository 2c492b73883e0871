"""Where a goal stands, and waiting for it: one way for `Client`'s `GoalHandle` and `Pipeline`.

A wait polls where the goal stands until it is in one of the states waited for. It ends early,
with GoalEnded, once the goal has ended in another state for good (completed, denied, ...):
waiting for `held` on a completed goal went on until the timeout, then said "still completed".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar, get_args

from plangate.errors import GoalEnded, GoalNotCompleted, GoalWaiting, InputInvalid
from plangate.goal_status import GoalStatus, read_status
from plangate.store import Store
from schemas.goal_states import TERMINAL, WAITING_FOR_PERSON, ended_for_good
from schemas.goal_states import GoalStatus as GoalState

T = TypeVar("T")

STATES = frozenset(get_args(GoalState))
FIRST_PAUSE = 0.02  # seconds between the first reads; then longer, up to the wait's longest


def check_wait(timeout: float, until: Collection[str]) -> None:
    """Refuse a wait that could not mean anything: no time to wait, or states no goal has."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise InputInvalid(f"timeout must be a number of seconds, 0 or more, not {timeout!r}")
    if isinstance(until, str):  # read letter by letter, no state would ever match
        raise InputInvalid(f"until must be a set of states ({{{until!r}}}), not one text")
    unknown = sorted(set(until) - STATES)
    if unknown:
        raise InputInvalid(
            f"until names no goal state: {', '.join(map(repr, unknown))}; the states are "
            f"{', '.join(sorted(STATES))}"
        )


def wait_until(
    goal_id: str,
    read: Callable[[], T],
    state_of: Callable[[T], tuple[str, str | None]],
    timeout: float,
    until: Collection[str],
    longest_pause: float = 0.5,
) -> T:
    """Read the goal (`read`) until its state is one of `until`; return what was read then.

    `state_of` says what was read's state and the reason given for it. GoalEnded at once if
    the goal has ended for good in another state; TimeoutError with its last state after
    `timeout` seconds; InputInvalid for a wait that cannot mean anything (`check_wait`).
    """
    check_wait(timeout, until)
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while True:
        current = read()
        status, reason = state_of(current)
        if status in until:
            return current
        if ended_for_good(status):
            raise GoalEnded(goal_id, status, reason, until)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"goal {goal_id} is still {status} after {timeout:g} s")
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(longest_pause, pause * 1.5)


def status_of(store: Store, goal_id: str, *, exact: bool = True) -> GoalStatus:
    """Return where a goal stands, read at one moment (NotFound if there is none).

    `exact`: only the whole id; else a person's unique prefix of it will do.
    """
    with store.snapshot() as session:
        return read_status(session, goal_id, exact=exact)


def wait_for_status(
    goal_id: str,
    read: Callable[[], GoalStatus],
    timeout: float,
    until: Collection[str],
    longest_pause: float = 0.5,
) -> GoalStatus:
    """Read the goal's status (`read`) until it is one of `until`, as `wait_until` does."""
    return wait_until(goal_id, read, _state, timeout, until, longest_pause)


def result_of(
    goal_id: str,
    read: Callable[[], GoalStatus],
    timeout: float,
    wait_for_people: bool,
    longest_pause: float = 0.5,
) -> dict[str, Any]:
    """Wait for the goal to end and return each step's output, by step id.

    GoalNotCompleted (with the status and the reason) if it failed, was denied, rejected,
    expired or cancelled; TimeoutError if it has not ended in `timeout`. GoalWaiting at once
    if it waits for a person, unless `wait_for_people`: then it waits for them too.
    """
    until = TERMINAL if wait_for_people else TERMINAL | WAITING_FOR_PERSON
    final = wait_for_status(goal_id, read, timeout, until, longest_pause)
    if final.status in WAITING_FOR_PERSON and not wait_for_people:
        raise GoalWaiting(final.goal_id, final.status, final.reason)
    if final.status != "completed":
        raise GoalNotCompleted(final.goal_id, final.status, final.reason)
    return final.outputs


def _state(current: GoalStatus) -> tuple[str, str | None]:
    return current.status, current.reason
