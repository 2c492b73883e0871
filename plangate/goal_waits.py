"""Waiting for a goal to reach a state: one way for `Client`'s `GoalHandle` and for `Pipeline`.

A wait polls where the goal stands until it is in one of the states waited for. It ends early,
with GoalEnded, once the goal has ended in another state for good (completed, denied, ...):
waiting for `held` on a completed goal went on until the timeout, then said "still completed".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import TypeVar, get_args

from plangate.errors import GoalEnded, InputInvalid
from schemas.goal_states import GoalStatus as GoalState
from schemas.goal_states import ended_for_good

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
