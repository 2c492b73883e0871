"""Submitting a goal: stored and queued in one transaction, published, traced from the start."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from plangate import telemetry
from plangate.bus import Bus, Envelope
from plangate.errors import Conflict, InputInvalid, quoted
from plangate.relay import deliver
from plangate.store import Store
from plangate.store.goals import goal_with_key, store_goal
from plangate.store.outbox import emit
from schemas import GoalSubmitted, new_id


@dataclass(frozen=True)
class Submitted:
    """A submitted goal: its id, its trace, and whether it already existed (same key).

    `queued`: the broker was unreachable, so the goal waits in the outbox until a worker's relay
    publishes it.
    """

    goal_id: str
    trace_id: str | None
    duplicate: bool = False
    queued: bool = False


def submit_goal(
    store: Store,
    bus: Bus,
    text: str,
    *,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    mark: Callable[[Sequence[Envelope]], None] | None = None,
) -> Submitted:
    """Store a new goal and publish goal.submitted; the same idempotency key yields one goal.

    `mark` marks the published row sent (see `deliver`).
    """
    if idempotency_key is not None and not idempotency_key.strip():
        raise InputInvalid("the idempotency key is empty: give one that names this goal, or none")
    if idempotency_key is not None:  # else no transaction: on SQLite each waits for the lock
        existing = _goal_with_key(store, idempotency_key, text)
        if existing is not None:
            return existing
    with telemetry.tracer().start_as_current_span("submit goal") as span:
        message = _goal_message(text, metadata, idempotency_key)
        span.set_attribute("plangate.goal_id", message.goal_id)
        headers: dict[str, str] = {}
        telemetry.inject(headers)
        try:
            with store.session() as session:
                store_goal(session, message, headers)
                envelope = emit(session, message)
        except IntegrityError:
            # The same key came twice at once, and the other submission stored its goal
            # between our look and our write: that goal is the answer to both.
            existing = (
                None if idempotency_key is None else _goal_with_key(store, idempotency_key, text)
            )
            if existing is None:
                raise
            return existing
        sent = deliver(store, bus, [envelope], mark)
        return Submitted(message.goal_id, telemetry.current_trace_id(), queued=not sent)


def _goal_with_key(store: Store, idempotency_key: str, text: str) -> Submitted | None:
    """Return the goal already submitted with this idempotency key, if there is one.

    Conflict if that goal's text is another: the key names a different goal, and answering
    with it would let the caller take the other goal's outcome for this one's.
    """
    with store.reading() as session:
        existing = goal_with_key(session, idempotency_key)
        if existing is None:
            return None
        if existing.text != text:
            raise Conflict(
                f"the idempotency key {quoted(idempotency_key)} was given to goal "
                f"{existing.id} with another text; give each new goal a key of its own"
            )
        return Submitted(existing.id, telemetry.trace_id_of(existing.trace_headers), duplicate=True)


def _goal_message(
    text: str, metadata: Mapping[str, str] | None, idempotency_key: str | None
) -> GoalSubmitted:
    """Return the goal.submitted message; InputInvalid, saying what to change, if it cannot be."""
    if not text.strip():
        raise InputInvalid("the goal is empty: say what should be done, in words")
    try:
        return GoalSubmitted(
            goal_id=new_id(),
            text=text,
            metadata=dict(metadata or {}),
            idempotency_key=idempotency_key,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "goal"
        raise InputInvalid(f"the goal's {where}: {problem['msg']}") from exc
