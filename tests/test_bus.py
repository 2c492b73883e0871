"""The bus, on the memory transport and a real Redis: delivery, publishing, retries, dead letters.

Every test gets its own namespace (exchange and queues), runs its consumer in a thread and stops
it in the fixture. Nothing waits with `sleep`: handlers report through queues and events, and the
test waits on those with timeouts.
"""

from __future__ import annotations

import base64
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from uuid import uuid4

import pytest

from plangate.bus import Bus, Delivery, Envelope, Handler, Observer, StageConsumer
from plangate.errors import Reject, Retry
from schemas import DeadLetter, GoalSubmitted, Message, PlanFailed
from tests.servers import rabbitmqctl
from tests.support import eventually

WAIT = 5.0  # seconds: generous upper bound for anything that should happen at once
FAST_RETRIES = (0.01, 0.01)


def goal(text: str = "count open tickets") -> GoalSubmitted:
    return GoalSubmitted(goal_id=uuid4().hex, text=text)


def answer(message: Message) -> list[Envelope]:
    """What our test planner publishes for a goal: a plan.failed naming the goal's text."""
    assert isinstance(message, GoalSubmitted)
    return [Envelope.of(PlanFailed(goal_id=message.goal_id, reasons=[f"no plan: {message.text}"]))]


def answers_seen(
    observer: Observer, *goal_ids: str, timeout: float = WAIT
) -> dict[str, PlanFailed]:
    """Return the answers to these goals, by goal id, once the observer has seen them all."""
    answers: dict[str, PlanFailed] = {}
    deadline = time.monotonic() + timeout
    while len(answers) < len(goal_ids) and (left := deadline - time.monotonic()) > 0:
        message = observer.next(timeout=left)
        if isinstance(message, PlanFailed) and message.goal_id in goal_ids:
            answers[message.goal_id] = message
    missing = set(goal_ids) - set(answers)
    assert not missing, f"no answer to goals {missing} was published within {timeout} s"
    return answers


def answer_seen(observer: Observer, goal_id: str) -> PlanFailed:
    """Return the answer to `goal_id` once the observer sees it; fail the test if none comes."""
    return answers_seen(observer, goal_id)[goal_id]


def dead_letter_body(letter: DeadLetter) -> bytes:
    return base64.b64decode(letter.body_b64)


@dataclass
class Running:
    """A stage consumer running in its own thread."""

    consumer: StageConsumer
    stop: threading.Event
    thread: threading.Thread
    crashed: queue.Queue[BaseException]

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the consumer did not stop"


@pytest.fixture
def start_consumer(bus: Bus) -> Iterator[Callable[..., Running]]:
    """Start a planner consumer in a thread; every one started is stopped and joined after."""
    started: list[Running] = []

    def start(
        handler: Handler,
        *,
        concurrency: int = 4,
        max_attempts: int = 3,
        on_published: Callable[[Sequence[Envelope]], None] | None = None,
        retry_delays: Sequence[float] = FAST_RETRIES,
    ) -> Running:
        consumer = bus.stage_consumer(
            "planner",
            handler,
            concurrency=concurrency,
            max_attempts=max_attempts,
            on_published=on_published,
            retry_delays=retry_delays,
        )
        stop = threading.Event()
        crashed: queue.Queue[BaseException] = queue.Queue()

        def target() -> None:
            try:
                consumer.run(stop)
            except BaseException as exc:  # reported by the fixture, not lost in the thread
                crashed.put(exc)

        thread = threading.Thread(target=target, name="test-planner", daemon=True)
        started.append(Running(consumer, stop, thread, crashed))
        thread.start()
        assert consumer.ready.wait(WAIT), "the consumer did not start consuming"
        return started[-1]

    yield start
    for running in started:
        running.shutdown()
    for running in started:
        if not running.crashed.empty():
            raise running.crashed.get()


def test_a_published_goal_reaches_the_handler_as_its_model_with_its_delivery(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a planner consumer.

    When a goal.submitted is published,
    Then the handler receives the decoded GoalSubmitted, equal to what was sent, with a Delivery
    naming the stage queue, the routing key and attempt 1.
    """
    received: queue.Queue[tuple[Message, Delivery]] = queue.Queue()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        received.put((message, delivery))
        return []

    start_consumer(handler)
    sent = goal("check the SLA")
    bus.publish([Envelope.of(sent)])

    message, delivery = received.get(timeout=WAIT)
    assert isinstance(message, GoalSubmitted)
    assert message == sent
    assert delivery.queue == bus.topology.queue_name("planner")
    assert delivery.routing_key == "goal.submitted"
    assert delivery.attempt == 1
    assert delivery.redelivered is False
    assert delivery.headers["x-plangate-goal-id"] == sent.goal_id
    assert delivery.headers["x-plangate-message-id"] == sent.message_id


def test_returned_envelopes_are_published_then_on_published_is_called_then_the_message_acked(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a planner whose handler answers each goal and an on_published hook.

    When a goal is handled,
    Then its answer is on the broker before the hook runs (an observer already has it), the hook
    gets exactly the returned envelopes, and only then is the goal settled: once the consumer
    has stopped, nothing is left in the queue to be delivered again.
    """
    events: queue.Queue[str] = queue.Queue()
    returned: list[Envelope] = []
    hooked: list[Sequence[Envelope]] = []
    sent = goal()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        returned.extend(answer(message))
        events.put("handler returned")
        return returned

    with bus.observe() as observer:

        def on_published(envelopes: Sequence[Envelope]) -> None:
            # The test thread is blocked on `events` until this hook returns, so using the
            # observer here is not concurrent use of its connection.
            seen = answer_seen(observer, sent.goal_id)
            events.put(f"answer {seen.reasons} seen on the broker")
            hooked.append(envelopes)
            events.put("on_published called")

        running = start_consumer(handler, on_published=on_published)
        bus.publish([Envelope.of(sent)])
        sequence = [events.get(timeout=WAIT) for _ in range(3)]
        running.shutdown()

    assert sequence == [
        "handler returned",
        "answer ['no plan: count open tickets'] seen on the broker",
        "on_published called",
    ]
    assert hooked == [returned]
    assert bus.queue_depth("planner") == 0
    assert bus.take_dead_letters() == []


def test_a_rejected_message_is_dead_lettered_with_its_reason_and_the_next_one_is_handled(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a planner that rejects goals it can never handle.

    When a goal is rejected with Reject("why") and another goal follows,
    Then the first is in the dead letters with reason "why", the second is answered, and the
    rejected goal is not tried again.
    """
    calls: list[str] = []

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        assert isinstance(message, GoalSubmitted)
        calls.append(message.text)
        if message.text == "impossible":
            raise Reject("why")
        return answer(message)

    # One at a time: the second goal is received only once the first is settled.
    start_consumer(handler, concurrency=1)
    rejected, handled = goal("impossible"), goal("count open tickets")
    with bus.observe() as observer:
        bus.publish([Envelope.of(rejected), Envelope.of(handled)])
        answer_seen(observer, handled.goal_id)

    [letter] = bus.take_dead_letters()
    assert letter.reason == "why"
    assert letter.queue == bus.topology.queue_name("planner")
    assert letter.routing_key == "goal.submitted"
    assert letter.headers["x-plangate-goal-id"] == rejected.goal_id
    assert GoalSubmitted.model_validate_json(dead_letter_body(letter)) == rejected
    assert calls == ["impossible", "count open tickets"]


def test_a_failing_handler_is_retried_then_dead_lettered_after_max_attempts(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a planner whose handler raises an ordinary exception for one goal.

    When that goal is published,
    Then it is handled three times with Delivery.attempt 1, 2, 3, and after the third failure it
    is in the dead letters saying how often it failed and the last error; the loop goes on.
    """
    attempts: queue.Queue[int] = queue.Queue()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        assert isinstance(message, GoalSubmitted)
        if message.text == "flaky":
            attempts.put(delivery.attempt)
            raise RuntimeError("tickets API is down")
        return answer(message)

    start_consumer(handler, concurrency=1, max_attempts=3)
    failing, later = goal("flaky"), goal("count open tickets")
    bus.publish([Envelope.of(failing)])
    assert [attempts.get(timeout=WAIT) for _ in range(3)] == [1, 2, 3]

    with bus.observe() as observer:
        bus.publish([Envelope.of(later)])  # received only after the third failure is settled
        answer_seen(observer, later.goal_id)

    [letter] = bus.take_dead_letters()
    assert letter.reason == "failed 3 times; last error: RuntimeError: tickets API is down"
    assert letter.headers["x-plangate-goal-id"] == failing.goal_id
    assert letter.headers["x-plangate-attempt"] == "3"
    assert GoalSubmitted.model_validate_json(dead_letter_body(letter)) == failing
    assert attempts.empty()


def test_a_handler_raising_retry_is_called_again_after_the_delay_it_asked_for(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a planner whose handler raises Retry(delay=0.05) on the first attempt.

    When a goal is published (and the consumer's own retry delay is 30 s),
    Then the second attempt comes after the handler's short delay and its answer is published.
    """
    attempts: queue.Queue[int] = queue.Queue()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        attempts.put(delivery.attempt)
        if delivery.attempt == 1:
            raise Retry("another executor holds the step", delay=0.05)
        return answer(message)

    start_consumer(handler, retry_delays=(30.0,))
    sent = goal()
    with bus.observe() as observer:
        bus.publish([Envelope.of(sent)])
        answer_seen(observer, sent.goal_id)

    assert [attempts.get_nowait() for _ in range(2)] == [1, 2]
    assert bus.take_dead_letters() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(
            b'{"schema_version":1,"type":"goal.submitted","goal_id":"g","text":"x","n":NaN}',
            "JSON contains NaN, which is not allowed",
            id="nan",
        ),
        pytest.param(b'{"schema_version":1,', "body is not valid JSON", id="invalid-json"),
    ],
)
def test_a_malformed_body_is_dead_lettered_without_calling_the_handler(
    bus: Bus, start_consumer: Callable[..., Running], body: bytes, reason: str
) -> None:
    """Given a planner consumer.

    When a malformed body arrives on goal.submitted, followed by a good goal,
    Then the malformed one is dead-lettered with the reason, the handler only ever sees the
    good goal, and answers it.
    """
    handled: list[Message] = []

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        handled.append(message)
        return answer(message)

    start_consumer(handler, concurrency=1)
    good = goal()
    with bus.observe() as observer:
        bus.publish([Envelope("goal.submitted", body), Envelope.of(good)])
        answer_seen(observer, good.goal_id)

    [letter] = bus.take_dead_letters()
    assert letter.reason.startswith(reason)
    assert letter.routing_key == "goal.submitted"
    assert dead_letter_body(letter) == body
    assert handled == [good]


def test_stopping_lets_an_in_flight_handler_finish_and_publishes_its_answer(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a planner handling a goal, its handler waiting to be released.

    When stop is requested while the handler is still running, and then it is released,
    Then the consumer keeps running until the handler has returned, its answer is published,
    and the goal is settled (not left in the queue, not dead-lettered).
    """
    started, release = threading.Event(), threading.Event()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        started.set()
        assert release.wait(WAIT), "the test never released the handler"
        return answer(message)

    running = start_consumer(handler)
    sent = goal()
    with bus.observe() as observer:
        bus.publish([Envelope.of(sent)])
        assert started.wait(WAIT)
        running.stop.set()
        running.thread.join(0.2)  # not a wait for anything: a consumer that quit is gone by now
        assert running.thread.is_alive(), "the consumer quit with a handler still running"
        release.set()
        running.thread.join(WAIT)
        assert not running.thread.is_alive()
        answer_seen(observer, sent.goal_id)

    assert bus.queue_depth("planner") == 0
    assert bus.take_dead_letters() == []


def test_concurrency_two_runs_two_handlers_at_the_same_time(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a planner with concurrency 2 whose handler only returns once two are running.

    When two goals are published,
    Then both handlers meet at the barrier and both answers are published.
    """
    both_running = threading.Barrier(2, timeout=WAIT)

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        both_running.wait()
        return answer(message)

    start_consumer(handler, concurrency=2)
    first, second = goal("first"), goal("second")
    with bus.observe() as observer:
        bus.publish([Envelope.of(first), Envelope.of(second)])
        answers = answers_seen(observer, first.goal_id, second.goal_id)

    assert {goal_id: answer.reasons for goal_id, answer in answers.items()} == {
        first.goal_id: ["no plan: first"],
        second.goal_id: ["no plan: second"],
    }
    assert not both_running.broken


def test_messages_published_before_any_consumer_starts_are_not_lost(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a client that declared the topology (`Bus.declare`), and no consumer yet.

    When the client publishes three goals,
    Then they wait in the durable planner queue, and a consumer started later handles all
    three, in order.
    """
    client = Bus(bus.url, namespace=bus.topology.namespace)
    goals = [goal(f"goal {n}") for n in range(3)]
    try:
        client.declare()
        client.publish([Envelope.of(g) for g in goals])
    finally:
        client.close()
    assert bus.queue_depth("planner") == 3

    handled: queue.Queue[Message] = queue.Queue()

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        handled.put(message)
        return []

    start_consumer(handler, concurrency=1)
    assert [handled.get(timeout=WAIT) for _ in goals] == goals


def test_an_observer_of_some_types_receives_only_those(bus: Bus) -> None:
    """Given an observer of plan.failed only, and a goal and its plan.failed published,
    Then it receives the plan.failed and nothing else; a type no message has, a bare string
    and no type at all are refused.
    """
    submitted = goal()
    failed = PlanFailed(goal_id=submitted.goal_id, reasons=["no plan"])
    with bus.observe(types={"plan.failed"}) as observer:
        bus.publish([Envelope.of(submitted), Envelope.of(failed)])
        assert observer.next(timeout=WAIT) == failed
        assert observer.next(timeout=0.2) is None

    for types, said in [
        ({"plan.failled"}, r"no message has the type plan\.failled"),
        ("plan.failed", "a collection of one message type or more"),
        (set(), "a collection of one message type or more"),
    ]:
        with pytest.raises(ValueError, match=said), bus.observe(types=types):
            pass


def test_queue_depth_counts_the_messages_waiting_in_a_stage_queue(bus: Bus) -> None:
    """Given a declared bus with empty queues.

    When two goals are published,
    Then the planner queue holds two and the gate and executor queues hold none.
    """
    assert bus.queue_depth("planner") == 0

    bus.publish([Envelope.of(goal()), Envelope.of(goal())])

    assert bus.queue_depth("planner") == 2
    assert bus.queue_depth("gate") == 0
    assert bus.queue_depth("executor") == 0


@pytest.mark.rabbitmq
def test_a_view_whose_kept_connection_went_stale_reads_on_a_new_one(rabbitmq_url: str) -> None:
    """Given a view on RabbitMQ that has read the broker, whose kept connection is then lost
    between two sweeps (as when a broker restarts, or an idle connection is cut on the way),
    When it reads again, Then it answers, on a new connection: no outage is reported.

    (A lost connection to Redis is made again by redis-py itself, unseen.)
    """
    bus = Bus(rabbitmq_url, namespace=f"t{uuid4().hex[:10]}")
    try:
        bus.declare()
        with bus.view() as view:
            assert view.queue_depth("planner") == 0
            kept = view._connection
            assert kept is not None
            kept.collect()  # what kombu does with a connection found lost: its channels go
            bus.publish([Envelope.of(goal())])
            assert view.queue_depth("planner") == 1
            assert view._connection is not kept
    finally:
        bus.close()


def rejected_letters(bus: Bus, count: int) -> list[DeadLetter]:
    """Wait until `count` dead letters wait in the queue; return them (they stay there)."""
    deadline = time.monotonic() + WAIT
    while len(letters := bus.dead_letters()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(letters) == count, f"expected {count} dead letters, found {len(letters)}"
    return letters


def test_listing_dead_letters_leaves_them_in_the_queue(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given two messages a handler rejected,
    When an operator lists the dead letters twice,
    Then both lists show both letters, with their reasons.
    """

    def refuse(message: Message, delivery: Delivery) -> Sequence[Envelope]:
        raise Reject(f"cannot plan {message.goal_id}")

    start_consumer(refuse)
    first, second = goal(), goal()
    bus.publish([Envelope.of(first), Envelope.of(second)])

    listed = rejected_letters(bus, 2)

    assert {letter.reason for letter in listed} == {
        f"cannot plan {first.goal_id}",
        f"cannot plan {second.goal_id}",
    }
    assert len(bus.dead_letters()) == 2


def test_a_replayed_dead_letter_reaches_its_stage_again(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a message dead-lettered while its handler was broken, and another one,
    When the handler is fixed and the operator replays only the first letter,
    Then the handler receives that message again at attempt 1, and the other letter stays.
    """
    broken = threading.Event()
    broken.set()
    received: queue.Queue[tuple[Message, Delivery]] = queue.Queue()

    def handler(message: Message, delivery: Delivery) -> Sequence[Envelope]:
        if broken.is_set():
            raise Reject("the handler is broken")
        received.put((message, delivery))
        return []

    start_consumer(handler)
    wanted, other = goal("replay me"), goal("leave me")
    bus.publish([Envelope.of(wanted), Envelope.of(other)])
    letters = {
        letter.headers["x-plangate-message-id"]: letter for letter in rejected_letters(bus, 2)
    }
    broken.clear()

    replayed = bus.replay_dead_letters([letters[wanted.message_id].message_id])

    assert [letter.message_id for letter in replayed] == [letters[wanted.message_id].message_id]
    message, delivery = received.get(timeout=WAIT)
    assert message == wanted
    assert delivery.attempt == 1
    (left,) = bus.dead_letters()
    assert left.message_id == letters[other.message_id].message_id


def test_a_dead_letter_after_plangates_own_retries_gives_its_words_not_a_repr(
    bus: Bus, start_consumer: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    """Given a handler that asks to retry with plangate's Retry (an approval by a key not yet
    trusted, say) until the attempts run out,
    When it gives up,
    Then the dead letter's reason and the log say the error's own words, the log names the
    message's type and queue (not the retry key), and carries no traceback for it.
    """

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        raise Retry("approval refused: signed by unknown key ed25519:0123")

    start_consumer(handler, concurrency=1, max_attempts=2)
    failing = goal("needs a key")
    with caplog.at_level("ERROR", logger="plangate.bus.settlement"):
        bus.publish([Envelope.of(failing)])
        [letter] = eventually(bus.take_dead_letters, WAIT, "a dead letter")

    said = "approval refused: signed by unknown key ed25519:0123"
    assert letter.reason == f"failed 2 times; last error: {said}"
    [record] = [r for r in caplog.records if r.getMessage().startswith("giving up on")]
    assert record.getMessage().startswith("giving up on goal.submitted from ")
    assert record.getMessage().endswith(said)
    assert record.exc_info is None


def test_listing_dead_letters_sends_none_of_them_out_again(
    bus: Bus, start_consumer: Callable[..., Running]
) -> None:
    """Given a consumer bound to `dead.#` on the exchange (an alert on dead letters) and one
    letter,
    When an operator lists the dead letters three times,
    Then the alert received the letter once; a listing put each letter back through the
    exchange, so every look at the queue paged again.
    """
    from kombu import Queue

    alert_queue = Queue(
        f"{bus.topology.namespace}.alert",
        exchange=bus.topology.exchange,
        routing_key="dead.#",
        durable=False,
    )
    with bus.connection() as connection:
        alert = alert_queue.bind(connection.channel())
        alert.declare()

        def refuse(message: Message, delivery: Delivery) -> Sequence[Envelope]:
            raise Reject("cannot plan it")

        start_consumer(refuse)
        bus.publish([Envelope.of(goal())])
        rejected_letters(bus, 1)
        for _ in range(3):
            assert len(bus.dead_letters()) == 1

        received = []
        while (raw := alert.get(no_ack=True)) is not None:
            received.append(raw)
        alert.delete()

    assert len(received) == 1


def test_a_publish_after_the_broker_closed_the_connection_goes_out_on_a_new_one(
    rabbitmq_url: str,
) -> None:
    """Given a bus on RabbitMQ that has published, whose connection the broker then closes
    (`rabbitmqctl close_all_connections`, as a broker restart or a policy does),
    When the same thread publishes again, with the broker up,
    Then the message goes out, and the stage consumes it: kombu's retrying publish failed with
    "'NoneType' object has no attribute 'transport_options'", so serve said a goal was queued
    for the relay (31 s later) and executors dropped step announcements.
    """
    bus = Bus(rabbitmq_url, namespace=f"t{uuid4().hex[:10]}")
    try:
        bus.declare()
        bus.publish([Envelope.of(goal())])
        rabbitmqctl(rabbitmq_url, "close_all_connections", "a test closes them")

        bus.publish([Envelope.of(goal())])

        assert eventually(lambda: bus.queue_depth("planner") == 2 or None, timeout=5)
    finally:
        bus.close()
