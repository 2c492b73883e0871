"""A handler past its deadline is reported and its message handed back: nothing waits on it."""

from __future__ import annotations

import json
import logging
import queue
import threading
from uuid import uuid4

import pytest

from plangate.bus import Bus, Delivery, Envelope
from schemas import GoalSubmitted, Message
from tests.support import eventually

WAIT = 5.0


def test_a_handler_past_its_deadline_is_reported_and_its_message_handed_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a stage consumer with a handler deadline of 0.3 s whose handler hangs the first
    time it is called,
    When a goal arrives,
    Then the hang is logged as past its deadline, and the message comes back as attempt 2 and
    is handled while the first call still hangs.
    """
    bus = Bus("memory://", namespace=f"t{uuid4().hex[:10]}")
    bus.declare()
    release = threading.Event()
    attempts: queue.Queue[int] = queue.Queue()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        attempts.put(delivery.attempt)
        if delivery.attempt == 1:
            release.wait(WAIT * 2)
        return []

    consumer = bus.stage_consumer("planner", handler, concurrency=2, handler_deadline=0.3)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert consumer.ready.wait(WAIT)
        with caplog.at_level(logging.ERROR, logger="plangate.bus.consumer"):
            bus.publish([Envelope.of(GoalSubmitted(goal_id=uuid4().hex, text="count tickets"))])

            assert attempts.get(timeout=WAIT) == 1
            assert attempts.get(timeout=WAIT) == 2
        assert not release.is_set()
        assert any("past its 0.3 s deadline" in record.message for record in caplog.records)
    finally:
        release.set()
        stop.set()
        thread.join(WAIT)
        bus.close()
    assert not thread.is_alive()


def test_a_message_made_with_a_time_without_a_zone_is_refused_and_the_loop_goes_on() -> None:
    """Given a goal published raw whose `occurred_at` has no time zone (as a LocalDateTime),
    When the stage takes it, and then a normal goal,
    Then the first is a dead letter saying so (the contract asks RFC 3339 with its offset: a
    naive time is no instant) and the second reaches the handler: a sender's clock never
    breaks the loop.
    """
    bus = Bus("memory://", namespace=f"t{uuid4().hex[:10]}")
    bus.declare()
    seen: queue.Queue[str] = queue.Queue()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        seen.put(message.goal_id)
        return []

    naive = GoalSubmitted(goal_id="naive", text="count tickets")
    body = naive.model_dump(mode="json") | {"occurred_at": "2026-01-01T00:00:00"}
    raw = Envelope("goal.submitted", json.dumps(body).encode(), {"x-plangate-goal-id": "naive"})
    consumer = bus.stage_consumer("planner", handler, concurrency=1)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert consumer.ready.wait(WAIT)
        bus.publish([raw, Envelope.of(GoalSubmitted(goal_id="aware", text="count tickets"))])

        assert seen.get(timeout=WAIT) == "aware"
        (letter,) = eventually(bus.dead_letters, timeout=WAIT, what="the dead letter")
        assert "occurred_at: Input should have timezone info" in letter.reason
        assert seen.empty()
    finally:
        stop.set()
        thread.join(WAIT)
        bus.close()
