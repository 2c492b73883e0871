"""An executor that stops: no new step starts, the calls in flight end, each run is handed back.

At SIGTERM a worker stops taking messages and waits for its handlers. An executor's handler is
a whole plan's run, which may outlast any grace period a pod is given (two 60 s writes in a
row did, and the SIGKILL landed mid-write: a write of unknown outcome, for a person). So a run
goes on only until the tool calls it has started end; their results are recorded, and its
message goes back to the broker (`HandBack`) for another executor, which resumes the run at
the steps that have no result yet (`StepLedger`: a step recorded is not called again).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

from plangate.errors import HandBack
from plangate.store import Store
from schemas import Plan

if TYPE_CHECKING:
    from executor_worker.plan_run import PlanRun

NAMED = 5  # calls in flight named in the stop's log line; the rest are counted


class Draining:
    """Whether the executor is stopping (`stop` set), and the tool calls it waits for meanwhile."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self._stop = stop if stop is not None else threading.Event()
        # Reentrant: `waits_for` runs in a signal handler, which a second SIGTERM may interrupt.
        self._lock = threading.RLock()
        self._calls: dict[object, str] = {}  # each call in flight, named, by a token of its own

    @property
    def stopping(self) -> bool:
        """Return whether the executor is stopping: then no step starts."""
        return self._stop.is_set()

    @contextmanager
    def calling(self, goal_id: str, step_id: str) -> Iterator[None]:
        """Count a tool call as in flight while the block runs."""
        token = object()
        with self._lock:
            self._calls[token] = f"goal {goal_id} step {step_id!r}"
        try:
            yield
        finally:
            with self._lock:
                del self._calls[token]

    def waits_for(self) -> str:
        """Say what a stop waits for now: the tool calls in flight, by goal and step."""
        # Called from the signal handler, in the consume loop's thread, which makes no call.
        with self._lock:
            calls = list(self._calls.values())
        after = "no new step starts; a run stopped short is handed to another executor"
        if not calls:
            return f"no tool call in flight; {after}"
        named = ", ".join(calls[:NAMED]) + (
            f" and {len(calls) - NAMED} more" if calls[NAMED:] else ""
        )
        count = f"{len(calls)} tool call{'s' if len(calls) > 1 else ''}"
        return f"finishing {count} in flight ({named}); {after}"


def hand_back(run: PlanRun, plan: Plan, store: Store) -> NoReturn:
    """Record what a run stopped short has in hand, then hand its message back (raise).

    What is in hand is the reads that answered last: recorded, the run that resumes goes on
    with their answers rather than asking again. The goal stays `running`.
    """
    with store.session() as session:
        run.record_last(session)
    run.announce_last()
    ended = ", ".join(repr(step_id) for step_id in run.outcomes)
    after = f"after step {ended}" if ended else "before it took up a step"
    left = [repr(step_id) for step_id in run.not_started]
    # Not "left to run": a step an earlier executor recorded is among them, and is not run again.
    which = f"step {left[0]} is" if len(left) == 1 else f"steps {', '.join(left)} are"
    raise HandBack(
        f"goal {plan.goal_id}'s run (plan {plan.plan_id}) stopped {after}, as this executor "
        f"stops; {which} left to another executor (any it finds recorded it does not run again)"
    )
