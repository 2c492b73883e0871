"""Goal records: create once, move between states, and audit every move."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import Table, bindparam, event, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from plangate import telemetry
from plangate.errors import Conflict, InputInvalid, NotFound, Reject, quoted
from plangate.redaction import redact
from plangate.store import audit
from plangate.store.engine import after_release
from plangate.store.hot_statements import HotStatement
from plangate.store.models import GoalRow, GoalStatus, PlanRow
from plangate.store.rows import insert_row
from schemas import GoalSubmitted, Plan, plan_hash, utcnow
from schemas.decoding import storable_text
from schemas.goal_states import Mover, check_transition
from schemas.identifiers import MAX_ID_LENGTH

log = logging.getLogger(__name__)
# Moves made in a transaction, logged once it commits (a rolled-back move never happened).
_MOVES = "plangate_goal_moves"


def ensure_goal(session: Session, message: GoalSubmitted, trace_headers: dict[str, str]) -> GoalRow:
    """Return the goal's row, creating it (and its audit entry) if this is its first sight."""
    row = session.get(GoalRow, message.goal_id)
    if row is None:
        _refuse_a_second_goal_for_its_key(session, message)
        headers = telemetry.trace_context(trace_headers)
        if "traceparent" not in headers:
            # Published raw, without a trace context: the goal's one trace starts here, at the
            # first stage (the span handling it), and every later message and resend keeps it.
            telemetry.inject(headers)
        store_goal(session, message, headers)
        row = session.get_one(GoalRow, message.goal_id)
    return row


def _refuse_a_second_goal_for_its_key(session: Session, message: GoalSubmitted) -> None:
    """Reject a goal published with a key another goal has (else a unique violation, retried).

    Only a foreign publisher's message gets here with a key: `Client.submit` stores its goal
    before publishing. The goal of the key stands; the message is a dead letter saying so.
    """
    key = message.idempotency_key
    if key is None:
        return
    other = goal_with_key(session, key)
    if other is not None:
        raise Reject(
            f"the idempotency key {quoted(key)} is goal {other.id}'s already: no second goal "
            f"is made for goal {quoted(message.goal_id)}; send a new goal with a key of its own"
        )


def goal_with_key(session: Session, idempotency_key: str) -> GoalRow | None:
    """Return the goal submitted with this idempotency key, if there is one."""
    return session.execute(
        select(GoalRow).where(GoalRow.idempotency_key == idempotency_key)
    ).scalar_one_or_none()


SUBMITTER = "submitter"  # the actor of a goal's submission, whoever its metadata names


def store_goal(session: Session, message: GoalSubmitted, trace_headers: dict[str, str]) -> None:
    """Store a new goal, `submitted`, and audit it (a plain INSERT: every goal passes here)."""
    goal = {
        "id": message.goal_id,
        "text": message.text,
        "status": "submitted",
        "metadata": dict(message.metadata),
        "idempotency_key": message.idempotency_key,
        "trace_headers": dict(trace_headers),
    }
    insert_row(session, GoalRow, goal)
    audit.append(
        session,
        "goal.submitted",
        # Who sent it is authenticated as no person (an intake token, the broker): the name
        # its metadata gives is its submitter's word, in `data`, not an actor beside reviewers'.
        actor=SUBMITTER,
        goal_id=message.goal_id,
        data={"text": message.text, "metadata": dict(message.metadata)},
    )


RowT = TypeVar("RowT")
# The shortest start of an id taken for the whole (`plangate run` prints 8 characters).
MIN_SHORT_ID = 6
_HEX = re.compile("[0-9a-f]+")


def by_id(
    session: Session, model: type[RowT], column: Any, given: str, *, typed: bool = False
) -> RowT | None:
    """Return the row with this id, or the one row whose id starts with it (a short id).

    Short ids are the starts of the ids plangate makes (32 hex digits), which it prints
    shortened. Conflict when one starts more than one such id. `typed`: a person gave the id
    (a command, a page), so it may be a short one even where it is also another row's whole
    id, and is then refused as ambiguous: a goal published under the start of a real one's
    id must not take the commands meant for that one. An id the stages pass along is whole.
    """
    row = session.get(model, given)
    if (row is not None and not typed) or not MIN_SHORT_ID <= len(given) < 32:
        return row
    if not _HEX.fullmatch(given):
        return row
    # Only ids of a made id's length: filtered in SQL, so that no number of other rows that
    # share the start can crowd the real one out of the limit.
    query = select(model).where(column.startswith(given), func.length(column) == 32).limit(2)
    started = list(session.execute(query).scalars())
    if row is not None and started:
        whole = getattr(started[0], column.key)
        this_one = (
            ", or ask for this one over the API, which takes whole ids only (GET /api/v1/goals/ID)"
            if model is GoalRow
            else ""
        )
        raise Conflict(
            f"{quoted(given)} is one id in full and the start of {whole}: a command a person "
            "types takes neither, so that an id published as the start of another's takes no "
            f"command meant for that one; give the other's whole id{this_one}"
        )
    if len(started) > 1:
        raise Conflict(f"{quoted(given)} starts more than one id; give more of it")
    return row if row is not None else (started[0] if started else None)


def get_goal(
    session: Session, goal_id: str, *, typed: bool = False, exact: bool = False
) -> GoalRow:
    """Return a goal's row (by its id or a short start of it) or raise NotFound.

    `typed`: a person gave the id (see `by_id`). `exact`: a program gave it, as it was given
    the id or chose it: no short id (a publisher's own short id found another goal by its
    start while its own was not stored yet). InputInvalid if it is no id at all.
    """
    if not isinstance(goal_id, str) or not goal_id.strip():
        given = "empty" if isinstance(goal_id, str) else f"a {type(goal_id).__name__}"
        raise InputInvalid(
            f"the goal id is {given}; give a goal's id (`plangate goals list` shows goals)"
        )
    if exact:
        row = session.get(GoalRow, goal_id)
    else:
        row = by_id(session, GoalRow, GoalRow.id, goal_id, typed=typed)
    if row is None:
        raise NotFound(_no_goal(goal_id, exact))
    return row


def _no_goal(goal_id: str, exact: bool) -> str:
    """Say that no goal has the id, and where to look; a program asking is told more.

    A program may have published the goal on the broker, choosing its id: nothing answered
    it, and a goal the planner refused is never stored, so the answer says where its reason is.
    """
    said = f"no goal {quoted(goal_id)}"
    if not exact:
        if len(goal_id) < MIN_SHORT_ID:
            return f"{said} (a short id needs {MIN_SHORT_ID} characters); {_CHECK_THE_ID}"
        if len(goal_id) > MAX_ID_LENGTH:  # no goal's id: where a refused goal is would mislead
            return f"{said}; {_CHECK_THE_ID}"
        return f"{said}; {_CHECK_THE_ID}; {_REFUSED_GOALS_BRIEFLY}"
    # A short id finds nothing here: saying how short one may be misled callers.
    return (
        f"{said} (here a goal's whole id, as its submission answered it or its publisher chose "
        f"it); {_CHECK_THE_ID}. A goal published on the broker that the planner refused is "
        "never stored: its reason is in the dead-letter queue (`plangate dlq list`, or an "
        "observer bound to `dead.#` as docs/publishing-goals.md says)"
    )


_CHECK_THE_ID = "check the id (`plangate goals list` shows goals)"
_REFUSED_GOALS_BRIEFLY = "a goal the planner refused is never stored: `plangate dlq list` has it"


# Built once, and run as plain statements: a move is made four times per goal, and the ORM's
# locked `get` and unit-of-work flush took three times what these two statements take.
_GOALS = cast(Table, GoalRow.__table__)
_MOVE = HotStatement(
    update(_GOALS)
    .where(_GOALS.c.id == bindparam("goal_id"))
    .values(
        status=bindparam("new_status"),
        status_reason=bindparam("new_reason"),
        reconciled=0,  # it moved: the reconciler's backoff starts over
        planning_until=None,  # whatever planning was under way has ended
        updated_at=bindparam("now"),
    )
)


_STATUS_QUERY = select(_GOALS.c.status, _GOALS.c.status_reason).where(
    _GOALS.c.id == bindparam("goal_id")
)
# Every stage asks this of every message: on SQLite's own cursor (`HotStatement`).
_STATUS = HotStatement(_STATUS_QUERY)
_LOCK_STATUS_AND_REASON = HotStatement(_STATUS_QUERY.with_for_update())


class GoalState(NamedTuple):
    """A goal's status and the reason for it, as `goal_status` reads them."""

    status: str
    status_reason: str | None


class PlanVersion(NamedTuple):
    """A goal's newest plan as `newest_plan` reads it: which revision, and its trace."""

    plan_id: str
    revision: int
    trace_headers: dict[str, Any]


_PLANS = cast(Table, PlanRow.__table__)
_NEWEST_PLAN = HotStatement(
    select(_PLANS.c.plan_id, _PLANS.c.revision, _PLANS.c.trace_headers)
    .where(_PLANS.c.goal_id == bindparam("goal_id"))
    .order_by(_PLANS.c.revision.desc())
    .limit(1)
)


def goal_status(session: Session, goal_id: str, *, lock: bool = False) -> GoalState | None:
    """Return a goal's `status` and `status_reason` (by its whole id), or None if none.

    One plain statement: what the stages ask of a goal on every message. With `lock`, the row
    stays locked until the transaction ends, and the status may be handed to `transition`.
    """
    statement = _LOCK_STATUS_AND_REASON if lock else _STATUS
    found = statement.rows(session, {"goal_id": goal_id})
    return GoalState(*found[0]) if found else None


_TEXT = HotStatement(select(_GOALS.c.text).where(_GOALS.c.id == bindparam("goal_id")))


def check_same_goal(session: Session, message: GoalSubmitted) -> None:
    """Reject a goal.submitted whose id names a stored goal of another text (a dead letter).

    A goal id names one goal: a second goal under it would be acked and never run, or be
    planned in place of the first.
    """
    found = _TEXT.first(session, {"goal_id": message.goal_id})
    if found is not None and found[0] != message.text:
        raise Reject(
            f"goal {message.goal_id} exists already, with another text: no second goal is made "
            "under its id; publish the new goal under an id of its own"
        )


def newest_plan(session: Session, goal_id: str) -> PlanVersion | None:
    """Return the `plan_id`, `revision` and `trace_headers` of a goal's newest plan, if any.

    Without the plan's body: the stages ask only whether a plan is the newest.
    """
    found = _NEWEST_PLAN.first(session, {"goal_id": goal_id})
    return PlanVersion(*found) if found is not None else None


def transition(
    session: Session,
    goal_id: str,
    status: GoalStatus,
    *,
    by: Mover,
    actor: str,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
    current: str | None = None,
) -> None:
    """Move a goal to `status` and record the move in the audit log.

    The reason is redacted and made storable: it is shown by every status command and answer.
    `current` is the status the caller read in this transaction with `goal_status(lock=True)`
    (one statement fewer); without it, it is read (and locked) here.
    """
    if reason is not None:
        reason = storable_text(redact(reason))
    session.flush()  # a change made to the goal's row in this transaction is written first
    # Locked and read afresh: a move checked against a status another transaction has since
    # changed (a cancel, a decision) would overwrite it on PostgreSQL.
    if current is None:
        found = goal_status(session, goal_id, lock=True)
        if found is None:
            goal_id = get_goal(session, goal_id).id  # a short id; raises NotFound for none
            found = goal_status(session, goal_id, lock=True)
            assert found is not None
        current = found.status
    check_transition(goal_id, current, status, by)
    # The trace it was made in: its line is written after the commit, when a person's
    # decision in `serve` has closed its span (its line named no trace).
    traced = telemetry.current_span_ids()
    session.info.setdefault(_MOVES, []).append((goal_id, current, status, actor, reason, traced))
    moved = {"status": status, "status_reason": reason, "reconciled": 0, "planning_until": None}
    now = utcnow()
    _MOVE.rows(
        session, {"goal_id": goal_id, "new_status": status, "new_reason": reason, "now": now}
    )
    # A row this transaction loaded before shows the move, as the ORM's own update would.
    loaded = session.identity_map.get(session.identity_key(GoalRow, goal_id))
    if loaded is not None:
        for name, value in {**moved, "updated_at": now}.items():
            set_committed_value(loaded, name, value)
    entry = dict(data or {})
    if reason:
        entry["reason"] = reason
    audit.append(session, f"goal.{status}", actor=actor, goal_id=goal_id, data=entry)


@event.listens_for(Session, "after_commit")
def _log_moves_once_released(session: Session) -> None:
    moves = session.info.pop(_MOVES, None)
    if moves:
        after_release(session, lambda: _log_moves(moves))


# Moves a person must look at are warnings: a team that ships warnings only saw neither.
_LEVELS = dict.fromkeys(("failed", "plan_failed", "needs_attention"), logging.WARNING)


def _log_moves(moves: list[tuple[str, str, str, str, str | None, tuple[str, str] | None]]) -> None:
    for goal_id, old, new, actor, reason, traced in moves:
        fields = {"goal_id": goal_id, "from": old, "to": new, "actor": actor}
        if traced is not None:
            fields["trace_id"], fields["span_id"] = traced
        log.log(
            _LEVELS.get(new, logging.INFO),
            "goal %s: %s -> %s by %s%s",
            goal_id,
            old,
            new,
            actor,
            f" ({reason})" if reason else "",
            extra=fields,
        )


@event.listens_for(Session, "after_soft_rollback")
def _forget_moves(session: Session, _transaction: object) -> None:
    session.info.pop(_MOVES, None)


def latest_plan(session: Session, goal_id: str) -> PlanRow | None:
    """Return the newest plan revision of a goal, if any."""
    return session.execute(
        select(PlanRow).where(PlanRow.goal_id == goal_id).order_by(PlanRow.revision.desc()).limit(1)
    ).scalar_one_or_none()


def plan_of(row: PlanRow) -> Plan:
    """Return the Plan model stored in a plan row."""
    return Plan.model_validate(row.body)


def plan_values(
    plan: Plan,
    planner: str,
    trace_headers: Mapping[str, Any],
    *,
    model: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
) -> dict[str, Any]:
    """Return the columns of the row that stores a plan revision, with its hash.

    `PlanRow(**plan_values(...))` is that row; `plan_of` is the way back.
    """
    return {
        "plan_id": plan.plan_id,
        "goal_id": plan.goal_id,
        "revision": plan.revision,
        "body": plan.model_dump(mode="json"),
        "plan_hash": plan_hash(plan),
        "planner": planner,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "trace_headers": dict(trace_headers),
    }
