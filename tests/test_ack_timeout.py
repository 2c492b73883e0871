"""RabbitMQ's `consumer_timeout`: a handler that outlasts it loses its consume loop's channel.

RabbitMQ closes a consumer's channel once a delivery waits for its ack longer than that (30
minutes by default), and takes back every message the channel held. The loop must notice at
once and consume again, with the slow handler still running, rather than wait for it blind.
These tests lower the broker's timeout to a second, and restore it after.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from plangate.bus import Bus, Delivery, Envelope
from plangate.bus.envelope import ATTEMPT_HEADER
from plangate.bus.producers import ThreadProducers
from plangate.client import Client
from plangate.errors import HandBack
from plangate.relay import relay_pending
from plangate.store import Store, open_store, outbox, outbox_waiting
from schemas import ExecutionCompleted, GoalSubmitted, Message
from tests.fleet import Fleet
from tests.servers import free_port, rabbitmqctl
from tests.support import eventually, write_playbook

pytestmark = pytest.mark.rabbitmq

ROOT = Path(__file__).resolve().parent.parent
# The broker checks its consumers' acks at each channel tick (a minute by default).
SHORTENED = {"consumer_timeout": 1000, "channel_tick_interval": 200}
APPROVE_ALL = 'rules:\n  - {name: approve-all, match: "true", action: approve, reason: test}\n'


@contextmanager
def broker_acks_within(url: str) -> Iterator[None]:
    """Lower the broker's ack timeout for the channels opened meanwhile; restore it after."""
    saved = {}
    for key, value in SHORTENED.items():
        said = rabbitmqctl(url, "eval", f"application:get_env(rabbit, {key}).")
        found = re.search(r"\{ok,\s*(\d+)\}", said)
        saved[key] = found.group(1) if found else None
        rabbitmqctl(url, "eval", f"application:set_env(rabbit, {key}, {value}).")
    try:
        yield
    finally:
        for key, old in saved.items():
            undo = f"set_env(rabbit, {key}, {old})" if old else f"unset_env(rabbit, {key})"
            rabbitmqctl(url, "eval", f"application:{undo}.")


class Readiness(threading.Event):
    """The consume loop's `ready` (what /readyz reads), counting the times it was withdrawn."""

    def __init__(self) -> None:
        super().__init__()
        self.withdrawn = 0

    def clear(self) -> None:
        if self.is_set():
            self.withdrawn += 1
        super().clear()


class SlowFirstTime:
    """A handler that holds the first delivery of "slow" until released; the rest are quick."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.slow_started = threading.Event()
        self.slow_ended = threading.Event()
        self.handled: queue.Queue[tuple[str, bool]] = queue.Queue()
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, message: Message, delivery: Delivery) -> list[Envelope]:
        text = getattr(message, "text", "")
        if text == "slow" and not delivery.redelivered:
            self.slow_started.set()
            self.release.wait(60)
            self.slow_ended.set()
        self.handled.put((text, delivery.redelivered))
        return []

    def next_handled(self, timeout: float = 10) -> tuple[str, bool]:
        item = self.handled.get(timeout=timeout)
        self.seen.append(item)
        return item


def goal(text: str) -> Envelope:
    return Envelope.of(GoalSubmitted(goal_id=uuid4().hex, text=text))


@dataclass
class SlowLoop:
    """A planner's consume loop on RabbitMQ, in a thread, whose handler is `SlowFirstTime`."""

    bus: Bus
    handler: SlowFirstTime
    readiness: Readiness
    stop: threading.Event
    thread: threading.Thread

    def closed_under_the_slow_handler(self) -> None:
        """Start it, send "slow", and wait until the broker closed its channel under the
        handler, gave the message back, and the loop consumes again on a new channel."""
        self.thread.start()
        assert self.readiness.wait(10)
        self.bus.publish([goal("slow")])
        assert self.handler.slow_started.wait(10)
        eventually(lambda: self.readiness.withdrawn, timeout=15, what="readiness withdrawn")
        assert self.handler.next_handled() == ("slow", True)  # taken back, and delivered again
        eventually(self.readiness.is_set, what="consuming again")


MakeSlowLoop = Callable[..., SlowLoop]


@pytest.fixture
def make_slow_loop(rabbitmq_url: str) -> Iterator[MakeSlowLoop]:
    """Make a `SlowLoop` (its handler, and `stage_consumer`'s keywords, the caller's)."""
    made: list[SlowLoop] = []

    def make(handler: SlowFirstTime | None = None, **options: Any) -> SlowLoop:
        bus = Bus(rabbitmq_url, f"t{uuid4().hex[:10]}", heartbeat=5)
        bus.declare()
        handler = handler or SlowFirstTime()
        consumer = bus.stage_consumer("planner", handler, **options)
        consumer.ready = readiness = Readiness()
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run_until_stopped, args=(stop,), daemon=True)
        made.append(SlowLoop(bus, handler, readiness, stop, thread))
        return made[-1]

    try:
        with broker_acks_within(rabbitmq_url):
            yield make
    finally:
        for loop in made:
            loop.handler.release.set()
            loop.stop.set()
            loop.thread.join(15)
            loop.bus.close()


@pytest.fixture
def slow_loop(make_slow_loop: MakeSlowLoop) -> SlowLoop:
    return make_slow_loop()


@pytest.mark.timeout(120)
def test_a_handler_past_rabbitmqs_ack_timeout_does_not_stop_the_others(
    slow_loop: SlowLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a consume loop on RabbitMQ whose consumer_timeout is 1 s, and a handler that holds
    its message far longer,
    When the broker closes the loop's channel and takes the message back,
    Then the loop says why and what to set, is not ready until it consumes again, and consumes
    again with the slow handler still running: the message taken back comes again, and a
    message sent meanwhile is handled at once (the loop waited for the slow handler, blind and
    ready, and took nothing until it ended); the slow handler's end, on the closed channel,
    neither fails the loop nor brings the message a third time.
    """
    bus, handler = slow_loop.bus, slow_loop.handler
    caplog.set_level(logging.WARNING)
    slow_loop.closed_under_the_slow_handler()
    bus.publish([goal("meanwhile")])
    assert handler.next_handled() == ("meanwhile", False)
    assert not handler.slow_ended.is_set()

    handler.release.set()
    assert handler.next_handled() == ("slow", False)  # its end: nothing to ack it on
    bus.publish([goal("after")])
    assert handler.next_handled() == ("after", False)

    assert handler.handled.empty()  # the slow message came twice, not a third time
    [said] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    text = said.getMessage()
    assert "the planner: RabbitMQ closed its channel" in text
    assert "(PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out" in text
    assert "Set RabbitMQ's consumer_timeout above PLANGATE_HANDLER_TIMEOUT_SECONDS" in text
    assert said.exc_info is None
    assert slow_loop.readiness.withdrawn == 1


@pytest.mark.timeout(120)
def test_a_loop_stopped_while_a_handler_of_its_lost_channel_runs_returns_once_it_ended(
    slow_loop: SlowLoop,
) -> None:
    """Given a consume loop on RabbitMQ whose channel the broker closed under a slow handler
    (consumer_timeout), the loop consuming again on a new one,
    When the worker is stopped (SIGTERM) while that handler still runs,
    Then the loop returns only once the handler has ended: it returned at once, and the worker
    closed the store and the bus the handler was still using, and said "stopped".
    """
    slow_loop.closed_under_the_slow_handler()

    slow_loop.stop.set()
    slow_loop.thread.join(3)
    returned_while_it_ran = not slow_loop.thread.is_alive()
    slow_loop.handler.release.set()
    slow_loop.thread.join(15)

    assert not returned_while_it_ran
    assert slow_loop.handler.slow_ended.is_set()
    assert not slow_loop.thread.is_alive()


class CountingHeld(SlowFirstTime):
    """`SlowFirstTime`, whose "held" messages wait for `release_held`; it counts the handlers
    running at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release_held = threading.Event()
        self.held_started: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._running = 0
        self.most = 0

    def __call__(self, message: Message, delivery: Delivery) -> list[Envelope]:
        with self._lock:
            self._running += 1
            self.most = max(self.most, self._running)
        try:
            if getattr(message, "text", "") == "held":
                self.held_started.put(message.goal_id)
                self.release_held.wait(60)
            return super().__call__(message, delivery)
        finally:
            with self._lock:
                self._running -= 1


@pytest.mark.timeout(120)
def test_a_handler_left_running_by_a_lost_channel_holds_its_slot_of_the_concurrency(
    make_slow_loop: MakeSlowLoop,
) -> None:
    """Given a consume loop on RabbitMQ with a concurrency of 2, whose channel the broker
    closed under a slow handler (consumer_timeout), the loop consuming again on a new one,
    When two held messages come while that handler still runs,
    Then one is handled and the other waits in the queue until the slow handler ends: the
    worker never runs more than 2 handlers at once (the new channel took 2 more: 3 ran).
    """
    handler = CountingHeld()
    loop = make_slow_loop(handler, concurrency=2)
    loop.closed_under_the_slow_handler()

    loop.bus.publish([goal("held"), goal("held")])
    handler.held_started.get(timeout=10)
    eventually(
        lambda: handler.held_started.qsize() or loop.bus.queue_depth("planner") == 1,
        timeout=10,
        what="the second held message taken, or left in the queue",
    )
    assert handler.held_started.empty()  # the second waits in the queue
    assert handler.most == 2

    handler.release.set()
    assert handler.next_handled() == ("slow", False)
    handler.held_started.get(timeout=10)  # its slot free, the second is taken
    handler.release_held.set()
    assert sorted([handler.next_handled(), handler.next_handled()]) == [("held", False)] * 2
    assert handler.most == 2
    assert loop.bus.queue_depth("planner") == 0


class FailingSlow(SlowFirstTime):
    """`SlowFirstTime`, whose "slow" message fails every time (the first, once released)."""

    def __call__(self, message: Message, delivery: Delivery) -> list[Envelope]:
        super().__call__(message, delivery)
        if getattr(message, "text", "") == "slow":
            raise RuntimeError("the slow call failed")
        return []


@pytest.mark.timeout(120)
def test_a_handler_left_running_by_a_lost_channel_stores_no_retry_when_it_fails(
    make_slow_loop: MakeSlowLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a consume loop on RabbitMQ whose channel the broker closed under a slow handler
    (consumer_timeout), the message come again and its copy failed (a retry stored),
    When the slow handler fails too,
    Then it stores no retry of its own, and says why: the copy owns the message's retries
    (a second retry was stored, the same attempt: the message was tried twice more, its
    attempts counted twice).
    """
    stored: list[Envelope] = []

    def defer(envelope: Envelope, _delay: float) -> Envelope:
        stored.append(envelope)
        return envelope

    caplog.set_level(logging.WARNING)
    handler = FailingSlow()
    loop = make_slow_loop(handler, defer=defer, retry_delays=[60.0])
    loop.closed_under_the_slow_handler()
    eventually(lambda: stored, what="the copy's retry stored")

    handler.release.set()
    assert handler.next_handled() == ("slow", False)
    loop.stop.set()
    loop.thread.join(15)  # once the slow handler has ended

    assert not loop.thread.is_alive()
    assert [envelope.headers[ATTEMPT_HEADER] for envelope in stored] == ["2"]
    said = [r.getMessage() for r in caplog.records if "whose channel was lost" in r.message]
    assert said == [
        "a handler of goal.submitted whose channel was lost failed (RuntimeError: the slow "
        "call failed); no retry: the message came again as the channel went, and that copy "
        "is handled (or sent on again, if it was left to this handler)"
    ]


class StoppingExecutorLike(SlowFirstTime):
    """`SlowFirstTime` as an executor takes a plan: the copy of "slow" that comes while its
    first run goes on is left to that run (acked), and that run, released, hands its message
    back (its worker stops). It notes each message's attempt as it comes."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: queue.Queue[tuple[str, int]] = queue.Queue()

    def __call__(self, message: Message, delivery: Delivery) -> list[Envelope]:
        text = getattr(message, "text", "")
        self.attempts.put((text, delivery.attempt))
        super().__call__(message, delivery)
        if text == "slow" and not delivery.redelivered and self.slow_ended.is_set():
            raise HandBack("goal g's run stopped after step 'one', as this executor stops")
        return []


@pytest.mark.timeout(120)
def test_a_run_left_running_by_a_lost_channel_is_handed_back_when_its_worker_stops(
    make_slow_loop: MakeSlowLoop,
) -> None:
    """Given an executor-like consume loop on RabbitMQ whose channel the broker closed under
    a slow run (consumer_timeout), the message's copy come again and left to that run (acked
    as running here already),
    When the worker stops (SIGTERM) and the run hands its message back,
    Then the message goes back to the stage, its attempt unchanged, and another worker takes it
    at once (its hand-back went nowhere: the goal waited for the reconciler, 60 s).
    """
    handler = StoppingExecutorLike()
    loop = make_slow_loop(handler)
    loop.closed_under_the_slow_handler()
    assert [handler.attempts.get(timeout=1) for _ in range(2)] == [("slow", 1)] * 2

    loop.stop.set()
    handler.release.set()
    loop.thread.join(15)
    assert not loop.thread.is_alive()

    other = StoppingExecutorLike()
    other_stop = threading.Event()
    consumer = loop.bus.stage_consumer("planner", other)
    thread = threading.Thread(target=consumer.run_until_stopped, args=(other_stop,), daemon=True)
    thread.start()
    try:
        assert other.attempts.get(timeout=10) == ("slow", 1)
        # Redelivered, if it reached the stopping worker's channel before that closed.
        assert other.next_handled()[0] == "slow"
    finally:
        other_stop.set()
        thread.join(15)
    assert other.handled.empty()


class FailingExecutorLike(StoppingExecutorLike):
    """`StoppingExecutorLike` whose first run, released, fails instead (its worker runs on)."""

    def __call__(self, message: Message, delivery: Delivery) -> list[Envelope]:
        try:
            return super().__call__(message, delivery)
        except HandBack:
            raise RuntimeError("the run's store claim was taken meanwhile") from None


@pytest.mark.timeout(120)
def test_a_run_left_running_by_a_lost_channel_that_fails_sends_its_message_on(
    make_slow_loop: MakeSlowLoop,
) -> None:
    """Given an executor-like consume loop on RabbitMQ whose channel the broker closed under
    a slow run (consumer_timeout), the message's copy come again and left to that run (acked
    as running here already),
    When that run fails,
    Then the message is sent on again, its attempt unchanged, and handled: the failure stored
    no retry (the copy owns it), and the copy was gone, so the goal waited for the reconciler.
    """
    handler = FailingExecutorLike()
    loop = make_slow_loop(handler, retry_delays=[60.0])
    loop.closed_under_the_slow_handler()
    assert [handler.attempts.get(timeout=1) for _ in range(2)] == [("slow", 1)] * 2

    handler.release.set()

    assert handler.attempts.get(timeout=15) == ("slow", 1)


class CompletingSlow(SlowFirstTime):
    """`SlowFirstTime` as an executor ends a run: the first "slow" delivery, released, stores
    its `execution.completed` in the outbox and returns it; its copy finds the run under way
    and sends nothing."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store

    def __call__(self, message: Message, delivery: Delivery) -> list[Envelope]:
        super().__call__(message, delivery)
        if getattr(message, "text", "") != "slow" or delivery.redelivered:
            return []
        completed = ExecutionCompleted(goal_id=message.goal_id, plan_id="p1", steps={})
        with self._store.session() as session:
            return [outbox.emit(session, completed)]


@pytest.fixture
def outbox_store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def completing_loop(make_slow_loop: MakeSlowLoop, outbox_store: Store) -> Iterator[SlowLoop]:
    """A `SlowLoop` whose handler is `CompletingSlow`, marking what it publishes as a worker
    does (`SentMarker`)."""
    marker = outbox.SentMarker(outbox_store)
    loop = make_slow_loop(CompletingSlow(outbox_store), on_published=marker)
    try:
        yield loop
    finally:
        loop.handler.release.set()
        loop.stop.set()
        loop.thread.join(15)
        marker.close()


def unsent(store: Store) -> int:
    """Return how many outbox rows are unsent, however young."""
    return outbox_waiting.unsent_elsewhere(store, (), stuck_after=-timedelta(days=1))


@pytest.mark.timeout(120)
def test_what_a_run_left_running_by_a_lost_channel_published_is_not_sent_again(
    completing_loop: SlowLoop, outbox_store: Store
) -> None:
    """Given a consume loop on RabbitMQ whose channel the broker closed under a slow run
    (consumer_timeout), its message come again and left to that run,
    When the run ends and publishes its `execution.completed` (stored in the outbox),
    Then that row is marked sent, and the relay finds nothing left unsent: the outcome is seen
    once (it was published a second time, the same message id, half a minute later, and every
    worker warned "relayed 1 outbox messages left unsent").
    """
    loop = completing_loop
    with loop.bus.observe(["execution.completed"]) as observer:
        loop.closed_under_the_slow_handler()
        loop.handler.release.set()
        assert isinstance(observer.next(timeout=10), ExecutionCompleted)
        eventually(lambda: unsent(outbox_store) == 0, what="its outbox row marked sent")

        relayed = relay_pending(outbox_store, loop.bus)

        assert relayed == 0
        assert observer.next(timeout=1) is None


@pytest.mark.timeout(120)
def test_what_a_run_left_running_by_a_lost_channel_failed_to_publish_is_relayed_once(
    completing_loop: SlowLoop, outbox_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a consume loop on RabbitMQ whose channel the broker closed under a slow run
    (consumer_timeout), its message come again and left to that run,
    When the run ends and the publish of its `execution.completed` fails,
    Then that row stays unsent, and the relay sends it: the outcome is seen once, not lost.
    """
    failed = threading.Event()
    publish = ThreadProducers.publish

    def failing_once(producers: ThreadProducers, envelopes: Sequence[Envelope]) -> None:
        if not failed.is_set() and any(e.routing_key == "execution.completed" for e in envelopes):
            failed.set()
            raise ConnectionError("the broker went as the run published")
        publish(producers, envelopes)

    monkeypatch.setattr(ThreadProducers, "publish", failing_once)
    loop = completing_loop
    with loop.bus.observe(["execution.completed"]) as observer:
        loop.closed_under_the_slow_handler()
        loop.handler.release.set()
        assert failed.wait(10)
        assert unsent(outbox_store) == 1

        relayed = relay_pending(outbox_store, loop.bus)

        assert relayed == 1
        assert isinstance(observer.next(timeout=10), ExecutionCompleted)
        assert observer.next(timeout=1) is None


class ProbeAnswers:
    """Ask a worker's /readyz again and again in a thread; keep each status code that came."""

    def __init__(self, port: int) -> None:
        self._url = f"http://127.0.0.1:{port}/readyz"
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ask, daemon=True)

    def _ask(self) -> None:
        while not self._stop.wait(0.02):
            try:
                with urllib.request.urlopen(self._url, timeout=2) as answer:
                    self.codes.append(answer.status)
            except urllib.error.HTTPError as refused:
                self.codes.append(refused.code)
            except OSError:
                self.codes.append(0)  # not listening yet

    def __enter__(self) -> ProbeAnswers:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.timeout(180)
def test_an_executor_past_rabbitmqs_ack_timeout_runs_other_goals_and_calls_the_tool_once(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    """Given a fleet on RabbitMQ whose consumer_timeout is 1 s, and a goal whose read the test
    holds (its tool's timeout is 300 s),
    When the broker closes the executor's channel under it,
    Then /readyz says 503 until the executor consumes again, and another goal completes while
    the read is still held (it waited for the read, ready: 29 s in the finding); once the read
    ends the first goal completes too, its read called once: its message, come again, was
    left to the run under way.
    """
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    playbook = write_playbook(tmp_path, "report", [{"id": "only", "tool": "held_read"}])
    marker = tmp_path / "held.calls"
    fleet = Fleet(
        rabbitmq_url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(playbook),
            "PLANGATE_TOOLS": "tests.held_read_tools",
            "PYTHONPATH": str(ROOT),
            "HELD_READ_MARKER": str(marker),
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    port = free_port()
    closed = "RabbitMQ closed its channel"
    try:
        with broker_acks_within(rabbitmq_url), Client(fleet.settings()) as client:
            fleet.start("planner")
            fleet.start("gate")
            fleet.start("executor", PLANGATE_METRICS_PORT=str(port))
            with ProbeAnswers(port) as probe:
                eventually(lambda: 200 in probe.codes, timeout=60, what="the executor ready")
                held = client.submit("a held report").goal_id
                eventually(marker.exists, timeout=60, what="the read to start")
                eventually(lambda: probe.codes[-1] == 503, timeout=15, what="/readyz 503")
                other = client.submit("a quick report").goal_id
                eventually(
                    lambda: client.status(other).status == "completed",
                    timeout=30,
                    what=f"the other goal to complete\n{fleet.logs()}",
                )
                eventually(lambda: probe.codes[-1] == 200, what="the executor ready again")
                answered = list(probe.codes)
            assert client.status(held).status == "running"
            marker.with_name(marker.name + ".release").touch()
            eventually(
                lambda: client.status(held).status == "completed",
                timeout=30,
                what=f"the held goal to complete\n{fleet.logs()}",
            )
    finally:
        fleet.stop_all()

    logs = fleet.logs()
    assert 503 in answered[answered.index(200) :], answered
    assert marker.read_text().split() == ["held", "quick"]  # the other goal's read: quick
    assert "not a broker outage" not in logs, logs
    assert logs.count(closed) == 1, logs
