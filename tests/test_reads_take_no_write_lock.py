"""What only reads the store takes no write lock: a review page or a backtest never stalls the
workers, and a worker's long write never stalls a reviewer's look.

On SQLite every writing transaction of every process takes the database's one write lock, in
turns; a reading one takes none (WAL). Views written as writing transactions queued behind the
workers and made them wait in turn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from plangate.embedded import Pipeline
from plangate.server.progress import plan_progress
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan


@contextmanager
def a_write_held_open(pipeline: Pipeline) -> Iterator[None]:
    """Keep a writing transaction open on the store (as a busy worker's) for the block."""
    begun, done = threading.Event(), threading.Event()

    def write() -> None:
        with pipeline.store.session():
            begun.set()
            done.wait(timeout=30)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert begun.wait(timeout=5), "the writing transaction did not begin"
    try:
        yield
    finally:
        done.set()
        writer.join(timeout=5)


def answers_within(seconds: float, read: Callable[[], Any]) -> bool:
    """Return whether `read`, run in a thread of its own, answers within `seconds`."""
    answered = threading.Event()

    def run() -> None:
        read()
        answered.set()

    threading.Thread(target=run, daemon=True).start()
    return answered.wait(timeout=seconds)


def test_the_review_views_answer_while_a_worker_holds_the_write_lock(pipeline: Pipeline) -> None:
    """Given a held plan, and a worker's writing transaction open on the store,
    When the review list, one held plan and its progress are read,
    Then each answers at once: none waits for the write lock (each queued behind it).
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=10)
    plan_id = only_plan(pipeline.store, goal_id).plan_id

    with a_write_held_open(pipeline):
        listed = answers_within(5, pipeline.review.held)
        shown = answers_within(5, lambda: pipeline.review.get(plan_id))
        progressed = answers_within(5, lambda: plan_progress(pipeline.store, plan_id))

    assert (listed, shown, progressed) == (True, True, True)
    assert [held.plan.plan_id for held in pipeline.review.held()] == [plan_id]
