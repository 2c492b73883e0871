"""The embedded mode: the three stages as threads in one process, on one bus and one store.

Its catalog is exactly the tools it loaded (not whatever earlier runs published to the store).
With `own_goals_only` (as `plangate run` uses it) it carries out only the goals submitted
through it: messages that other processes left unsent in the store's outbox (a decision taken
with `plangate review` while no worker ran, say) stay there for a deployment's workers.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from types import TracebackType
from typing import Any

from plangate import telemetry
from plangate.bus import STAGES, Bus
from plangate.config import Settings
from plangate.embedded_review import PipelineReview
from plangate.errors import ConfigError, PlangateError
from plangate.goal_status import GoalStatus
from plangate.goal_waits import FIRST_PAUSE, result_of, status_of, wait_until
from plangate.pipeline_ending import STOP_GRACE_SECONDS, cancel_unended
from plangate.planning import Planner
from plangate.relay import deliver, relay_pending
from plangate.run_marks import RunMarks, Settled, runs_folder, settle_ended_runs
from plangate.stages import (
    build_expiry,
    build_handler,
    build_sealing,
    configured_tools,
    stage_middleware,
)
from plangate.store import TERMINAL_STATUSES, GoalRow, Store, open_store
from plangate.store import outbox as outbox_rows
from plangate.store.outbox_waiting import unsent_elsewhere
from plangate.submission import Submitted, submit_goal
from plangate.tools import ToolRegistry
from planner_worker.loading import given_planner
from schemas import utcnow

log = logging.getLogger(__name__)


def bus_namespace(settings: Settings, broker_url: str) -> str:
    """Return the namespace a pipeline's bus uses: on memory://, one of its own unless given.

    kombu's memory transport is one broker per process: two pipelines on the default namespace
    took each other's messages (plans missing from the other's store, approvals signed by the
    other's key dead-lettered as forged), and so did one a failed test left running. A namespace
    given (`Settings(namespace=...)` or `PLANGATE_NAMESPACE`) is shared as given, so that a
    `Client` or another pipeline on the same store in this process reaches it.
    """
    if "namespace" in settings.model_fields_set or not broker_url.startswith("memory:"):
        return settings.namespace
    return f"{settings.namespace}-{uuid.uuid4().hex[:12]}"


class Pipeline(PipelineReview):
    """planner, gate and executor consuming in threads; use as a context manager.

    `planner`: one of your own (`plangate.planning.Planner`) in place of the one the settings
    choose; its drafts are validated and decided as any plan.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        broker_url: str = "memory://",
        registry: ToolRegistry | None = None,
        own_goals_only: bool = False,
        previews: bool = True,
        planner: Planner | None = None,
    ) -> None:
        self.settings = settings
        # Refused here, not at the first goal's planning: a class given for an instance, say.
        self._planner = None if planner is None else given_planner(planner)
        self.store: Store = open_store(settings.resolved_database_url())
        self.bus = Bus(broker_url, bus_namespace(settings, broker_url))
        self._registry = registry
        self._held: ToolRegistry | None = None  # the registry, once started with it
        self._submitted: set[str] = set()  # cancelled if the `with` block raises
        self._own_goals = self._submitted if own_goals_only else None
        self._previews = previews  # no: the plan is approved unseen (`plangate run --yes`)
        self._stop = threading.Event()
        # Each thread's end, as an event: waiting on a Thread's join that Ctrl-C interrupts
        # leaves it reported dead for good (CPython), and the run then waited on its tool.
        self._threads: list[threading.Event] = []
        self._review = None  # made on first use (`review`)
        self._marker = outbox_rows.SentMarker(self.store)
        self._released = False
        # The data folder's own store: the goals it carries out are marked as a live run's.
        self._run_marks = RunMarks(runs_folder(settings.data_dir))
        self.settled: list[Settled] = []  # goals of runs found over at start (see run_marks)

    def start(self, timeout: float = 10.0) -> None:
        """Build the handlers, start the consumer threads and wait until all consume.

        ConfigError if it was started before: a pipeline runs once (make another).
        """
        if self._stop.is_set() or self._threads:
            # Started again, its threads saw the stop of old and ended at once, and the goals
            # submitted then waited for good.
            raise ConfigError(
                f"this Pipeline is {'stopped' if self._stop.is_set() else 'running already'}: "
                "a pipeline runs once; make another (or use it in a with block)"
            )
        telemetry.setup_tracing()
        if self.settings.store_in_data_folder:
            self.settled = settle_ended_runs(self.store, self.settings.data_dir)
        self.bus.declare()
        if self._registry is None:
            self._registry = configured_tools(self.settings)
        self._registry.hold()  # its catalog is published below: a tool added later is in none
        self._held = self._registry
        for stage in STAGES:
            handler = build_handler(
                stage,
                self.settings,
                self.store,
                self.bus,
                self._registry,
                previews=self._previews,
                planner=self._planner,
            )
            consumer = self.bus.stage_consumer(
                stage,
                handler,
                concurrency=self.settings.concurrency,
                max_attempts=self.settings.max_attempts,
                on_published=self._marker,
                middleware=stage_middleware(stage),
            )
            self._start_thread(f"plangate-{stage}", functools.partial(consumer.run, self._stop))
            if not consumer.ready.wait(timeout):
                raise PlangateError(f"the {stage} stage did not start within {timeout} s")
        if self._own_goals is None:
            relay_pending(self.store, self.bus)
        self._start_thread("plangate-expiry", self._expire)

    def _start_thread(self, name: str, work: Callable[[], object]) -> None:
        ended = threading.Event()

        def run() -> None:
            try:
                work()
            finally:
                ended.set()

        threading.Thread(target=run, name=name, daemon=True).start()
        self._threads.append(ended)

    def _expire(self) -> None:
        """Every sweep interval, expire held plans past their TTL (they never run)."""
        expire = build_expiry(self.settings, self._own_goals)
        while not self._stop.wait(self.settings.sweep_interval_seconds):
            try:
                deliver(self.store, self.bus, expire(self.store, utcnow()))
            except Exception:  # the database is busy or down: try again next time
                log.warning("expiring held plans failed; will try again", exc_info=True)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop consuming, let in-flight work finish, and release connections.

        With a `timeout`, give in-flight work that long: False if some is still running (a
        stuck tool call), and then nothing is released, for the caller to decide. Stopping
        again after a stop changes nothing.
        """
        if not self.halt(timeout):
            return False
        if not self._released:
            self._released = True
            self.seal()
            self._run_marks.release()
            if self._held is not None:
                self._held.release()
            self._marker.close()
            self.bus.close()
            self.store.close()
        return True

    def seal(self) -> None:
        """Seal the audit chains as the gate does, once: the embedded gate runs for moments.

        Without it, `plangate audit verify` after `plangate run` warned that entries could
        have been removed unseen, of a log nothing had touched.
        """
        # Only the data folder's own store: on a deployment's, a checkpoint signed by this
        # folder's key, unknown to its monitors, made every `audit verify` of theirs exit 2.
        if self._threads and self.settings.store_in_data_folder:
            try:
                build_sealing(self.settings)(self.store)
            except Exception:  # the run's outcome stands; the next run seals it
                log.warning("could not seal the audit chains", exc_info=True)

    def halt(self, timeout: float | None = None) -> bool:
        """Stop consuming and wait for in-flight work, releasing nothing (the store stays open).

        False if some is still running after `timeout`.
        """
        self._stop.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for ended in self._threads:
            if not ended.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                return False
        return True

    def __enter__(self) -> Pipeline:
        try:
            self.start()
        except BaseException:
            self.stop()  # threads already started must not outlive a failed start
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.end_early(f"the `with Pipeline` block ended by {exc_type.__name__}")

    def end_early(self, reason: str, grace: float = STOP_GRACE_SECONDS) -> bool:
        """Cancel the goals submitted here that have not ended, then stop within `grace`.

        As `plangate run` does after Ctrl-C: no further step of them starts, and steps already
        running get `grace` seconds to end. Past it, a write still being called is marked
        `unknown` (for `plangate review settle`), and what still runs is left to end in the
        background, the store open to record it. Return whether everything stopped.
        """
        try:
            cancelled = cancel_unended(self.store, self._submitted, reason)
        except Exception:  # the store busy or gone: stopping is still bounded
            log.warning("could not cancel the pipeline's goals", exc_info=True)
            cancelled = []
        try:
            if self.stop(timeout=grace):
                return True
        except KeyboardInterrupt:  # another Ctrl-C: no more waiting
            pass
        from executor_worker.abandoned_steps import mark_abandoned

        try:
            unknown = [
                step
                for goal_id in cancelled
                for step in mark_abandoned(self.store, goal_id=goal_id)
            ]
        except Exception:  # the store busy or gone: the block ends all the same
            log.warning("could not mark the writes in flight as unknown", exc_info=True)
            unknown = []
        log.warning(
            "the pipeline's work (a step, or a plan being drafted) is still running after "
            "%g s; left to end in the background%s",
            grace,
            f" (write {', '.join(unknown)} may or may not happen)" if unknown else "",
        )
        self.seal()
        return False

    def submit(
        self,
        text: str,
        *,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """Submit a goal to the pipeline; ConfigError once it is stopped (nothing would run it)."""
        self._refuse_if_stopped()
        submitted = submit_goal(
            self.store,
            self.bus,
            text,
            metadata=metadata,
            idempotency_key=idempotency_key,
            mark=self._marker,
        )
        self._submitted.add(submitted.goal_id)
        # Marked for `plangate run` alone, which carries out a goal or two: a mark is an open
        # file until the pipeline stops, and a library's pipeline that ran thousands of goals
        # ran out of file descriptors.
        own = self._own_goals is not None and self.settings.store_in_data_folder
        if own and not submitted.duplicate:
            self._run_marks.hold(submitted.goal_id)
        return submitted

    def waiting_elsewhere(self) -> int:
        """Return how many messages of other goals wait unsent in the store's outbox."""
        return unsent_elsewhere(self.store, self._own_goals or set())

    def wait_for(
        self, goal_id: str, statuses: Collection[str] = TERMINAL_STATUSES, timeout: float = 30.0
    ) -> GoalRow:
        """Poll the store until the goal reaches one of `statuses`; TimeoutError otherwise.

        GoalEnded at once if it has ended for good in another state (completed, denied, ...).
        """

        def read() -> GoalRow | None:
            with self.store.reading() as session:
                return session.get(GoalRow, goal_id)

        # Polled as often as at first: a goal here takes milliseconds a hop.
        found = wait_until(goal_id, read, _state, timeout, statuses, longest_pause=FIRST_PAUSE)
        assert found is not None  # (None is in no state waited for)
        return found

    def status(self, goal_id: str) -> GoalStatus:
        """Return where a goal stands: its plan, decision and each step's result and output.

        As `Client.status` and `plangate status` read it; NotFound if there is none.
        """
        return status_of(self.store, goal_id)

    def result(
        self, goal_id: str, timeout: float = 30.0, wait_for_people: bool = False
    ) -> dict[str, Any]:
        """Wait for the goal to end and return each step's output, by step id.

        As `GoalHandle.result`: GoalNotCompleted (with the status and the reason) if it failed,
        was denied, rejected, expired or cancelled; TimeoutError if it has not ended in
        `timeout`; GoalWaiting at once if it waits for a person (held for review), unless
        `wait_for_people`.
        """
        read = functools.partial(self.status, goal_id)
        return result_of(goal_id, read, timeout, wait_for_people, longest_pause=FIRST_PAUSE)


def _state(goal: GoalRow | None) -> tuple[str, str | None]:
    return ("unknown", None) if goal is None else (goal.status, goal.status_reason)
