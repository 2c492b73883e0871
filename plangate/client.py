"""The Python client: submit goals and follow them.

from plangate.client import Client

with Client() as client:            # PLANGATE_BROKER_URL, PLANGATE_DATABASE_URL
    goal = client.submit("Check Jira ticket count, compare with SLA, and notify on-call engineer "
                         "if breached", idempotency_key="ticket-42")
    outputs = goal.result(timeout=120)  # {"count": {...}, ...}; GoalNotCompleted if it failed,
    # GoalWaiting at once if it waits for a person (`result(wait_for_people=True)` waits)

Close the client (or use `with`): it marks the last goals it published as sent, so that no
relay publishes them a second time.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from plangate import telemetry
from plangate.client_calls import said_as_plangate
from plangate.config import Settings
from plangate.current_settings import settings_from_environment
from plangate.errors import InputInvalid
from plangate.goal_status import GoalStatus, StepResult
from plangate.goal_waits import result_of, status_of, wait_for_status
from plangate.refusals import of_goal, refusal_audited
from plangate.store import (
    TERMINAL_STATUSES,
    Store,
    open_store,
)
from plangate.store.goal_list import GoalPage, list_goals, parse_since

__all__ = ["Client", "GoalHandle", "GoalStatus", "StepResult"]  # the results' types too

if TYPE_CHECKING:
    from plangate.bus import Bus
    from plangate.store.outbox import SentMarker


class GoalHandle:
    """A submitted goal: look it up or wait for it."""

    def __init__(
        self,
        client: Client,
        goal_id: str,
        trace_id: str | None,
        duplicate: bool,
        *,
        queued: bool = False,
    ) -> None:
        self._client = client
        self.goal_id = goal_id
        self.trace_id = trace_id
        self.duplicate = duplicate
        # The broker was unreachable: the goal is stored, and a worker's relay publishes it.
        self.queued = queued

    def __repr__(self) -> str:
        said = ", duplicate" * self.duplicate + ", queued" * self.queued
        return f"GoalHandle({self.goal_id!r}{said})"

    def status(self) -> GoalStatus:
        """Return the goal's current status."""
        return self._client.status(self.goal_id, exact=True)

    def wait(
        self, timeout: float = 300.0, until: Collection[str] = TERMINAL_STATUSES
    ) -> GoalStatus:
        """Poll until the goal reaches one of `until`; TimeoutError with its last state if not.

        GoalEnded at once if it has ended for good in another state (completed, denied, ...).
        """
        return wait_for_status(self.goal_id, self.status, timeout, until)

    def result(self, timeout: float = 300.0, wait_for_people: bool = False) -> dict[str, Any]:
        """Wait for the goal to end and return each step's output, by step id.

        Raises GoalNotCompleted (with the status and the reason) if it failed, was denied,
        rejected, expired or cancelled, and TimeoutError if it has not ended in `timeout`. A
        goal that waits for a person (held for review, or a step needing attention) raises
        GoalWaiting at once, as `plangate submit --wait` exits 4: a person may take hours.
        `wait_for_people=True` waits for them instead, up to `timeout`.
        """
        return result_of(self.goal_id, self.status, timeout, wait_for_people)


class Client:
    """Submits goals to the broker and reads their state from the store.

    Its calls raise PlangateError subclasses: StoreUnavailable while the database does not
    answer, InputInvalid, NotFound, Conflict, Forbidden, as each says. Close it when done (or
    use it in a `with` block); one Client may be shared by threads. Given no settings, it reads
    them from the environment: ConfigError names an invalid variable, or one a slip from a
    setting's name (`PLANGATE_BROKR_URL`), as the commands do.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        # From the environment: a misspelt variable refused, as every command refuses it (it
        # was ignored, and the goal queued on the default broker, where no worker heard it).
        self.settings = settings or settings_from_environment()
        self._store: Store = open_store(self.settings.resolved_database_url(), upgrade=False)
        self.closed = False

    @functools.cached_property
    def _bus(self) -> Bus:
        # Connected on first send: reading a goal's state (`plangate status`, `goals list`)
        # needs only the store, and kombu with its Redis client is a third of a CLI's start-up.
        from plangate.bus import Bus

        telemetry.setup_tracing()
        return Bus(self.settings.broker_url, self.settings.namespace)

    @functools.cached_property
    def _marker(self) -> SentMarker:
        # Rows are marked sent from a thread of its own, many per transaction: a submission
        # then takes one write transaction, not two. `close` marks what is left; a row left
        # unmarked (the process killed) is published again by a relay, which the stages
        # take as the redelivery it is.
        from plangate.store.outbox import SentMarker

        marker = SentMarker(self._store)
        # A client never closed (`Client().submit(...)` in a script) marks its rows as it goes
        # or as the interpreter exits: left unmarked, each goal was sent twice by the relay,
        # which warned of "outbox messages left unsent" as if the broker had failed.
        weakref.finalize(self, marker.close)
        return marker

    @said_as_plangate
    def submit(
        self,
        text: str,
        *,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        event: tuple[str, str] | None = None,
        admit: Callable[[], None] | None = None,
    ) -> GoalHandle:
        """Submit a goal; the same idempotency key again returns the first goal's handle.

        InputInvalid, before anything is stored, for what the HTTP intake refuses too.
        `event`: the goal came as the CloudEvent (source, id), which is its key instead;
        keys beginning `cloudevent:` are theirs alone. `admit`, called before a new goal (not
        a duplicate) is stored, may raise to refuse it.
        """
        from plangate.submission import submit_goal

        submitted = submit_goal(
            self._store,
            self._bus,
            text,
            metadata=metadata,
            idempotency_key=idempotency_key,
            mark=self._marker,
            event=event,
            admit=admit,
        )
        return GoalHandle(
            self,
            submitted.goal_id,
            submitted.trace_id,
            submitted.duplicate,
            queued=submitted.queued,
        )

    @said_as_plangate
    def goal(self, goal_id: str) -> GoalHandle:
        """Return a handle on an existing goal, named whole or by a unique prefix.

        The handle holds the goal's whole id. NotFound if there is none.
        """
        current = self.status(goal_id)
        return GoalHandle(self, current.goal_id, current.trace_id, duplicate=True)

    @said_as_plangate
    def cancel(
        self, goal_id: str, who: str, reason: str = "", roles: frozenset[str] = frozenset()
    ) -> GoalStatus:
        """Cancel a goal, as `who` with `roles` (audited): no further step of it starts.

        A goal that has not ended, or a rejected or failed one (feedback may plan it again:
        cancelling stops that). Conflict if it is completed, denied, expired or unplannable;
        Forbidden if a rule held its plan for a role `who` lacks. A refusal is audited
        (`review.refused`), as a refused approval is.
        """
        from plangate.cancellation import cancel_goal

        telemetry.setup_tracing()  # a span of the goal's trace: none was recorded before a send
        with refusal_audited(self._store, who, "cancel", of_goal(goal_id), reason):
            cancel_goal(self._store, goal_id, who, reason, roles)
        return self.status(goal_id)

    @said_as_plangate
    def retry(
        self, goal_id: str, who: str, reason: str = "", roles: frozenset[str] = frozenset()
    ) -> GoalStatus:
        """Send a failed, expired or unplannable goal back to the planner, as `who` (audited).

        The planner makes a new revision and the gate decides it again; Conflict in any other
        state (audited as a refusal, `review.refused`).
        """
        from plangate.goal_retry import retry_goal
        from plangate.relay import deliver

        telemetry.setup_tracing()  # the retry's span, as the cancel's
        with refusal_audited(self._store, who, "retry", of_goal(goal_id), reason):
            retried = retry_goal(self._store, goal_id, who, reason, roles)
        deliver(self._store, self._bus, [retried])
        return self.status(goal_id)

    @said_as_plangate
    def list_goals(
        self,
        *,
        state: str | Collection[str] | None = None,
        since: datetime | str | None = None,
        search: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        until: datetime | str | None = None,
    ) -> GoalPage:
        """Return the newest goals matching the filters, a page at a time (`next_cursor`).

        `since` and `until` (submitted before) are times, or as the API and the CLI take them:
        an age (30m, 2h, 7d) or an ISO time. InputInvalid if either is neither.
        """
        newer_than, older_than = _moment(since, "since"), _moment(until, "until")
        with self._store.reading() as session:
            return list_goals(
                session,
                state=state,
                since=newer_than,
                search=search,
                limit=limit,
                cursor=cursor,
                until=older_than,
            )

    @said_as_plangate
    def status(self, goal_id: str, *, exact: bool = False) -> GoalStatus:
        """Return where a goal stands (NotFound if there is none).

        A person may give a short id; `exact`: only the whole id (a program's, see `get_goal`).
        Read at one moment: the goal's state, its plan's decision and steps agree.
        """
        return status_of(self._store, goal_id, exact=exact)

    def close(self) -> None:
        """Mark what was sent, then release the broker and database connections."""
        self.closed = True
        if "_marker" in self.__dict__:
            self._marker.close()
        if "_bus" in self.__dict__:
            self._bus.close()
        self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _moment(given: datetime | str | None, name: str) -> datetime | None:
    if isinstance(given, str):
        return parse_since(given, name) if given else None  # `?since=`: no filter, as before
    if given is not None and not isinstance(given, datetime):
        raise InputInvalid(
            f"{name} must be a datetime or text such as '7d', not {type(given).__name__}"
        )
    return given
