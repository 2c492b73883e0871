"""A stage worker process: consume one stage's queue until SIGTERM.

Beside the consume loop, a sweeper thread relays outbox rows left unsent and republishes the
last message of stalled goals (the reconciler), so no goal depends on the broker keeping a
message. Any number of workers of each stage may run against one broker and one database.
With `PLANGATE_HEALTH_PORT` set it answers `/healthz` and `/readyz` there (`plangate.health`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import FrameType
from typing import Protocol, runtime_checkable

from sqlalchemy.exc import OperationalError

from executor_worker.abandoned_steps import mark_abandoned
from plangate import metrics, telemetry
from plangate.broker_seen import BrokerSeen
from plangate.bus import STAGES, Bus, Handler, Stage, StageConsumer
from plangate.catalog import keep_offering
from plangate.config import Settings
from plangate.errors import BrokerUnavailable, ConfigError
from plangate.health import Exposition, Readiness, start_health_server
from plangate.readiness import not_ready
from plangate.reconciler import RecentlyHeld, reconcile
from plangate.relay import deliver, relay_pending
from plangate.schema_wait import StoreWait
from plangate.signing_keys import own_key_watch
from plangate.stages import build_expiry, build_handler, build_sealing, stage_middleware
from plangate.store import Store, open_store
from plangate.store import outbox as outbox_rows
from plangate.store.engine import said_plainly
from plangate.store.outages import store_answered, store_failed
from plangate.store.schema import mismatch
from plangate.store.stage_progress import record_progress, stage_progress
from schemas import utcnow

log = logging.getLogger(__name__)


@runtime_checkable
class SaysWhatStopWaitsFor(Protocol):
    """A handler that can say what stopping its worker waits for (the executor's can)."""

    def waits_for(self) -> str:
        """Say what the worker's stop waits for now, for its log."""


@runtime_checkable
class LooksAtItsFiles(Protocol):
    """A handler reading a file an operator may change while it runs (the gate's policy)."""

    def look(self) -> None:
        """Read it again if it changed, saying what is wrong with it."""


class Worker:
    """One stage's worker: the consume loop in the calling thread, the sweeper beside it."""

    def __init__(
        self,
        stage: Stage,
        settings: Settings,
        concurrency: int | None = None,
        wait_for_schema: float = 0.0,
    ) -> None:
        self.stage = stage
        self.settings = settings
        self.concurrency = concurrency or settings.concurrency
        self.wait_for_schema = wait_for_schema  # seconds to wait for the migration (schema_wait)
        self.stop = threading.Event()
        self.exit_code = 0  # set when the worker stops for a reason of its own (see _sweep)
        # What the log says a stop waits for (an executor names its tool calls in flight).
        self._waits_for: Callable[[], str] = lambda: "finishing in-flight work"
        self._look: Callable[[], object] = lambda: None  # at each sweep (LooksAtItsFiles)

    def run(self) -> int:
        """Work until SIGTERM/SIGINT (or `stop` is set); return the process exit code."""
        telemetry.setup_tracing(f"plangate-{self.stage}")
        self._handle_signals()
        # Alive while the consume loop runs (reconnecting included) or waits for the store;
        # ready once it has subscribed, until shutdown begins.
        looping = threading.Event()
        probes = _Probes(looping)
        health = start_health_server(
            self.settings, alive=probes.alive, ready=probes.readiness, metrics=probes.exposition
        )
        try:
            started = self._start(probes)
            return 0 if started is None else self._work(*started, probes, looping)
        finally:
            if health is not None:
                health.close()

    def _start(self, probes: _Probes) -> tuple[Store, Bus, Handler] | None:
        """Open the store and build the handler, waiting while the database does not answer.

        None: stopped while waiting. A worker started during a database outage exited at
        once: on Kubernetes its restarts backed off, and it came back minutes after the
        database did. So did one whose connection the database ended while it started (a
        restart, `pg_terminate_backend`), after its store opened and before its first reads
        and writes (the executor's catalog). A store that answers but is not plangate's (an
        old schema, a file missing) still stops it at once, but for an old schema within
        `wait_for_schema` seconds (`plangate.schema_wait`).
        """
        waits = StoreWait(self.wait_for_schema)
        while True:
            try:
                started = self._started()
            except ConfigError as exc:
                delay = waits.retry_after(exc)
                if delay is None:
                    raise
                probes.waiting = waits.reason
                out = waits.store_out
                probes.metrics = metrics.exposition_without_store if out else metrics.exposition
                if self.stop.wait(delay):
                    return None
            else:
                waits.migration.ended()
                probes.waiting = "starting"
                return started

    def _started(self) -> tuple[Store, Bus, Handler]:
        """Open the store and the bus, and build the stage's handler on them (its first reads).

        A failure of the store's is a ConfigError caused by it, as at opening; whatever was
        opened is closed first.
        """
        store = open_store(self.settings.resolved_database_url(), upgrade=False)
        bus: Bus | None = None
        try:
            bus = Bus(
                self.settings.broker_url,
                self.settings.namespace,
                heartbeat=self.settings.amqp_heartbeat_seconds,
                redelivery_after=self.settings.redelivery_after_seconds,
            )
            with said_plainly(store.engine):
                handler = build_handler(self.stage, self.settings, store, bus, stopping=self.stop)
        except BaseException:
            if bus is not None:
                bus.close()
            store.close()
            raise
        return store, bus, handler

    def _work(
        self, store: Store, bus: Bus, handler: Handler, probes: _Probes, looping: threading.Event
    ) -> int:
        marker = outbox_rows.SentMarker(store)
        try:
            if isinstance(handler, SaysWhatStopWaitsFor):
                self._waits_for = handler.waits_for
            if isinstance(handler, LooksAtItsFiles):
                self._look = handler.look
            consumer = bus.stage_consumer(
                self.stage,
                handler,
                concurrency=self.concurrency,
                max_attempts=self.settings.max_attempts,
                on_published=marker,
                handler_deadline=self.settings.handler_timeout_seconds,
                middleware=stage_middleware(self.stage),
            )
            probes.ready = lambda: _readiness(store, bus, consumer.ready, self.stop)
            probes.metrics = lambda: metrics.exposition(metrics.registry_with(store))
            probes.waiting = None
            sweeper = threading.Thread(
                target=self._sweep,
                args=(store, bus, consumer),
                name="plangate-sweeper",
                daemon=True,
            )
            sweeper.start()
            # Not "consuming" yet: the broker may not answer (the consumer says when it does).
            queue = bus.topology.queue_name(self.stage)
            log.info("%s worker started; consuming %s once the broker answers", self.stage, queue)
            looping.set()
            try:
                consumer.run_until_stopped(self.stop)
            finally:
                looping.clear()
            sweeper.join(timeout=10)
        finally:
            probes.ready, probes.metrics = (lambda: "shutting down"), metrics.exposition
            marker.close()
            bus.close()
            store.close()
            telemetry.close()  # the last spans, before the process exits
        log.info("%s worker stopped", self.stage)
        return self.exit_code

    def _handle_signals(self) -> None:
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: %s", signal.Signals(signum).name, self._waits_for())
            self.stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGINT, request_stop)

    def _sweep(self, store: Store, bus: Bus, consumer: StageConsumer) -> None:
        interval = self.settings.sweep_interval_seconds
        stale = timedelta(seconds=self.settings.relay_after_seconds)
        stalled = timedelta(seconds=self.settings.reconcile_after_seconds)
        step_lease = timedelta(seconds=self.settings.step_lease_seconds)
        chores = self._stage_chores(bus)
        held = RecentlyHeld(stalled)
        pruning = Every(PRUNE_EVERY_SECONDS)
        seen = BrokerSeen(self.stage)
        # One connection for every sweep's reads of the broker, not one per read.
        with bus.view() as broker:
            while not self.stop.wait(interval):
                if self._schema_moved(store):
                    return
                self._look_at_files()  # needing no broker: a file fixed in an outage is seen
                reading_since = time.monotonic()
                try:
                    # Seen first, before the store is needed: a message held through a database
                    # outage is published again when it ends, and must not then look lost.
                    recently_held = held.update(broker.held_goal_ids())
                    # A read every broker answers (on RabbitMQ the one above asks nothing):
                    # without it, a broker down read "answers again" at every sweep.
                    broker.queue_depth(self.stage)
                    seen.answered(consuming=consumer.ready.is_set())
                    relayed = relay_pending(store, bus, older_than=stale)
                    if relayed:
                        log.warning("relayed %d outbox messages left unsent", relayed)
                    if pruning.due():
                        outbox_rows.prune_sent(store)
                    # How far this stage got, and what waits in each queue: a goal queued behind a
                    # backlog is not resent into it, and one whose message was lost is.
                    if consumer.taken_up_to is not None:
                        record_progress(store, self.stage, consumer.taken_up_to)
                    waiting = {stage: broker.queue_depth(stage) for stage in STAGES}
                    resent = reconcile(
                        store,
                        stalled,
                        step_lease=step_lease,
                        waiting=waiting,
                        progress=stage_progress(store),
                        held=recently_held,
                    )
                    deliver(store, bus, resent)
                    for chore in chores:
                        chore(store)
                    store_answered(store)
                except BrokerUnavailable as exc:  # said in full, no traceback
                    seen.lost(exc, interval, reached=consumer.consumed, since=reading_since)
                except OperationalError as exc:  # the database is down: said, as the broker
                    store_failed(store, exc, f"the {self.stage}'s sweep")
                except Exception:  # a fault of plangate's own: its traceback says where
                    log.warning("sweep failed; will try again in %g s", interval, exc_info=True)

    def _stage_chores(self, bus: Bus) -> list[Callable[[Store], object]]:
        """Return what this stage's sweep does besides every stage's relay and reconciling."""
        if self.stage == "executor":
            return [_executor_chores]
        if self.stage != "gate":
            return []
        # Gate workers expire held plans (idempotent: any number of them may sweep). They hold
        # the signing key: they seal the audit chains with checkpoints, and say when their key
        # leaves the trusted keys folder (executors then refuse it).
        expire = build_expiry(self.settings)
        own_key = own_key_watch(self.settings)
        return [
            lambda store: deliver(store, bus, expire(store, utcnow())),
            build_sealing(self.settings),
            lambda _store: own_key(),
        ]

    def _look_at_files(self) -> None:
        """Have the handler read its files again if they changed (the gate its policy)."""
        try:
            self._look()
        except Exception:  # a fault of plangate's own: its traceback says where
            log.warning("looking at the %s's files failed", self.stage, exc_info=True)

    def _schema_moved(self, store: Store) -> bool:
        """Stop the worker if the schema is no longer the one it knows; return whether it did.

        A `db upgrade` by a newer plangate moved the schema on under a running worker: its
        /readyz said so, but it went on consuming, writing with the old code to the new
        schema. Stopped, it exits as at start (2), and is restarted with the new version.
        """
        try:
            problem = mismatch(store.revision())
        except Exception:  # the store does not answer: the sweep says so
            return False
        if problem is None:
            return False
        log.error(
            "%s; this %s worker stops (messages wait for one that knows it)", problem, self.stage
        )
        self.exit_code = EXIT_SCHEMA_MOVED
        self.stop.set()
        return True


EXIT_SCHEMA_MOVED = 2  # as a worker started on that schema exits


def _executor_chores(store: Store) -> None:
    """Say the executor still offers its tools; mark cancelled goals' abandoned writes."""
    keep_offering(store)
    abandoned = mark_abandoned(store)
    if abandoned:
        log.warning(
            "cancelled goals' writes left in flight by an executor that stopped are marked "
            "unknown, for a person to settle: %s",
            ", ".join(abandoned),
        )


PRUNE_EVERY_SECONDS = 600.0  # sent outbox rows are removed a day on: no hurry


class Every:
    """Says when something done now and then is due again (at the first ask, too)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._next = 0.0

    def due(self) -> bool:
        """Return True if it is due now (and count from now), else False."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._seconds
        return True


class _Probes:
    """What the probe endpoint answers: waiting for the store first, then the worker's own."""

    def __init__(self, looping: threading.Event) -> None:
        self._looping = looping
        self.waiting: str | None = "starting"  # why it is not consuming yet, before it does
        self.ready: Readiness = lambda: self.waiting
        self.metrics: Exposition = metrics.exposition

    def alive(self) -> bool:
        return self.waiting is not None or self._looping.is_set()

    def readiness(self) -> str | None:
        return self.ready()

    def exposition(self) -> bytes:
        return self.metrics()


def _readiness(
    store: Store, bus: Bus, subscribed: threading.Event, stop: threading.Event
) -> str | None:
    """Say why the worker takes no work: shutting down, or the store's or broker's reason."""
    if stop.is_set():
        return "shutting down"
    # The store's or the broker's own reason first: "not consuming" alone named neither.
    problem = not_ready(store, bus)
    if problem is None and not subscribed.is_set():
        return "not consuming yet: subscribing to its queue"
    return problem
