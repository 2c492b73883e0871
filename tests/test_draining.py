"""SIGTERM drains an executor: the tool calls in flight end, no new step starts, and the run's
message goes back to the broker for another executor, which resumes it at the next step.

It ran the rest of the plan it held instead: two 60 s writes in a row outlasted Kubernetes'
60 s grace period, and the SIGKILL landed mid-write (a write of unknown outcome, for a person).
"""

from __future__ import annotations

import queue
import threading

from plangate.bus import Bus, Delivery, Envelope
from plangate.errors import HandBack
from schemas import GoalSubmitted, Message

WAIT = 30.0


def test_a_message_handed_back_goes_back_to_the_queue_as_it_came(bus: Bus) -> None:
    """Given a consumer whose handler hands its message back once the worker is stopping,
    When a goal's message is being handled and the consumer is stopped,
    Then the message is neither acked nor dead-lettered nor retried: it is in the queue again,
    and the next consumer gets it with its attempt unchanged (stopping is no failure of its).
    """
    began: queue.Queue[int] = queue.Queue()
    stop = threading.Event()

    def handing_back(message: Message, delivery: Delivery) -> list[Envelope]:
        began.put(delivery.attempt)
        stop.wait(WAIT)
        raise HandBack("the worker is stopping")

    consumer = bus.stage_consumer("planner", handing_back, retry_delays=(0.01,))
    stopped = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    stopped.start()
    assert consumer.ready.wait(WAIT)
    sent = GoalSubmitted(goal_id="g1", text="count open tickets")
    bus.publish([Envelope.of(sent)])
    assert began.get(timeout=WAIT) == 1
    stop.set()
    stopped.join(WAIT)
    assert not stopped.is_alive(), "the consumer did not stop"

    assert bus.queue_depth("planner") == 1
    assert bus.dead_letters() == []
    handled: queue.Queue[tuple[Message, int]] = queue.Queue()
    again = bus.stage_consumer("planner", lambda m, d: handled.put((m, d.attempt)) or [])
    stop_again = threading.Event()
    resumed = threading.Thread(target=again.run, args=(stop_again,), daemon=True)
    resumed.start()
    try:
        assert handled.get(timeout=WAIT) == (sent, 1)
    finally:
        stop_again.set()
        resumed.join(WAIT)
    assert bus.queue_depth("planner") == 0
