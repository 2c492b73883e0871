"""Submitting a goal: stored and queued in one transaction, published, traced from the start."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from plangate import telemetry
from plangate.bus import Bus, Envelope
from plangate.errors import Conflict, InputInvalid, quoted
from plangate.event_keys import event_key, legacy_event_key, refuse_event_metadata, refuse_reserved
from plangate.printable import undecodable_at
from plangate.relay import deliver
from plangate.store import Store
from plangate.store.goals import goal_with_key, store_goal
from plangate.store.outbox import emit
from schemas import GoalSubmitted, new_id
from schemas.decoding import JsonRefused, check_json_value


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
    event: tuple[str, str] | None = None,
    admit: Callable[[], None] | None = None,
) -> Submitted:
    """Store a new goal and publish goal.submitted; the same idempotency key yields one goal.

    Everything is checked before anything is stored (InputInvalid saying what to change), by
    the checks the HTTP intake makes: a goal the planner could not store must not wait for ever
    as `submitted`. `mark` marks the published row sent (see `deliver`). `event`: the goal
    came as the CloudEvent (source, id), which is its key (`plangate.event_keys`). `admit` is
    called before a new goal is stored, not for a duplicate: it raises to refuse it (serve's
    per-address limit).
    """
    if event is None:
        refuse_reserved(idempotency_key)
        refuse_event_metadata(metadata)
    else:
        idempotency_key = event_key(*event)
    message = _goal_message(text, metadata, idempotency_key)
    if message.idempotency_key is not None:  # else no transaction: on SQLite each waits
        existing = _earlier_goal(store, message, event)
        if existing is not None:
            return existing
    if admit is not None:
        admit()
    with telemetry.tracer().start_as_current_span("submit goal") as span:
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
            existing = None
            if message.idempotency_key is not None:
                existing = _goal_with_key(store, message, message.idempotency_key, event)
            if existing is None:
                raise
            return existing
        sent = deliver(store, bus, [envelope], mark)
        return Submitted(message.goal_id, telemetry.current_trace_id(), queued=not sent)


def _earlier_goal(
    store: Store, message: GoalSubmitted, event: tuple[str, str] | None
) -> Submitted | None:
    """Return the goal submitted before with the same key, or as the same CloudEvent."""
    assert message.idempotency_key is not None
    found = _goal_with_key(store, message, message.idempotency_key, event)
    if found is None and event is not None:  # stored before keys had a space of their own
        found = _goal_with_key(store, message, legacy_event_key(*event), event, legacy=True)
    return found


def _goal_with_key(
    store: Store,
    message: GoalSubmitted,
    key: str,
    event: tuple[str, str] | None,
    *,
    legacy: bool = False,
) -> Submitted | None:
    """Return the goal already submitted with this idempotency key, if there is one.

    Conflict if that goal's text or metadata is another: the key names a different goal, and
    answering with it would let the caller take the other goal's outcome for this one's.
    `legacy`: the key is the one the event had before; the goal counts only if it came as
    that very event.
    """
    with store.reading() as session:
        existing = goal_with_key(session, key)
        if existing is None:
            return None
        if legacy and (existing.meta.get("ce.source"), existing.meta.get("ce.id")) != event:
            return None  # a plain goal's key, or another event's: the old keys were ambiguous
        if existing.text != message.text or dict(existing.meta) != dict(message.metadata):
            raise Conflict(_key_taken(key, event))
        return Submitted(existing.id, telemetry.trace_id_of(existing.trace_headers), duplicate=True)


def _key_taken(key: str, event: tuple[str, str] | None) -> str:
    """Say that a key names another goal, naming neither that goal nor what differs.

    Every service submits with the one intake token, which also reads any goal by its id: a
    refusal that named the goal gave another service's goal, outputs and all, to whoever tried
    its key; and one that said whether the text or the metadata differed confirmed a guess.
    """
    if event is not None:
        source, event_id = event
        return (
            f"the CloudEvent with source {quoted(source)} and id {quoted(event_id)} was "
            "submitted before with other data; give each new event an id of its own, or send "
            "the first event's data unchanged"
        )
    return (
        f"the idempotency key {quoted(key)} was given to another goal, or to this one with "
        "another text or metadata; give each new goal a key of its own, or send the first "
        "goal's text and metadata unchanged"
    )


def _key_as_sent(key: str) -> str:
    """Return an idempotency key without the spaces around it, as an HTTP header carries it.

    Kept as given, `" k "` in a body and `k` in a header (whose spaces HTTP drops) were two
    keys, two goals. InputInvalid for an empty key, or one holding a control character.
    """
    if not key.strip():
        raise InputInvalid("the idempotency key is empty: give one that names this goal, or none")
    if not key.isprintable():
        raise InputInvalid("the idempotency key holds a control character (a newline); remove it")
    return key.strip()


def _goal_message(
    text: object, metadata: object = None, idempotency_key: object = None
) -> GoalSubmitted:
    """Return the goal.submitted message; InputInvalid, saying what to change, if it cannot be.

    Typed `object`: a library caller's values are checked, not trusted to match the hints.
    """
    if isinstance(text, str) and not text.strip():
        raise InputInvalid("the goal is empty: say what should be done, in words")
    if isinstance(text, str) and (at := undecodable_at(text)) is not None:
        # A command line's bytes that are no UTF-8 arrive as lone surrogates, which were said
        # as "JSON text ... holds a lone surrogate" to someone who typed no JSON.
        raise InputInvalid(
            f"the goal is not UTF-8 text (a byte that is no character, at character {at + 1}): "
            "set your terminal to UTF-8, or pass the goal as UTF-8 text"
        )
    if isinstance(idempotency_key, str):
        idempotency_key = _key_as_sent(idempotency_key)
    if isinstance(metadata, Mapping):  # a mapping that is no dict is read as one
        metadata = dict(metadata)
    try:  # the intake's own check (`strict_json_loads` makes it): NUL cannot be stored
        check_json_value([text, metadata, idempotency_key], allow_nul=False)
    except JsonRefused as exc:
        raise InputInvalid(f"the goal is refused: {exc}") from exc
    try:
        message = GoalSubmitted(
            goal_id=new_id(),
            text=text,  # validated here: pydantic takes any value
            metadata={} if metadata is None else metadata,
            idempotency_key=idempotency_key,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "goal"
        raise InputInvalid(f"the goal's {where}: {problem['msg']}") from exc
    return message
