"""plangate's errors: a small hierarchy rooted at PlangateError, each saying what to do next.

The contract's own errors (PlanInvalid, MessageRejected) live in `schemas.errors` because
`schemas` imports nothing of the project; they are re-exported here so users import one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, get_args, get_origin

from schemas.errors import MessageRejected, PlangateError, PlanInvalid, PlanProblem

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

__all__ = [
    "AlreadyApproved",
    "ApprovalInvalid",
    "BrokerRefused",
    "BrokerUnavailable",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "GoalEnded",
    "GoalNotCompleted",
    "HandBack",
    "MessageRejected",
    "NotFound",
    "NotReady",
    "PlanInvalid",
    "PlanProblem",
    "PlangateError",
    "PlanningFailed",
    "PolicyError",
    "Reject",
    "Retry",
    "ToolError",
    "ToolLoadError",
    "Unavailable",
    "describe",
    "quoted",
]


NO_ROUTE = "nothing is at "
"""How serve's answer to an address it has no route for begins (the CLI tells it from a refusal)."""


class ConfigError(PlangateError):
    """A setting or file is missing or wrong; the message names it and how to fix it."""


class SchemaBehind(ConfigError):
    """The database's schema is older than this plangate's (or absent): not migrated yet."""

    def __init__(self, message: str, current: str | None = None) -> None:
        """Say `message`; `current` is the revision found (None: an empty database)."""
        super().__init__(message)
        self.current = current


class BrokerUnavailable(PlangateError):
    """The broker could not be reached for long enough that a publish gave up."""


class StoreUnavailable(PlangateError):
    """The database did not answer (down, restarting, its connection dropped): try again."""


class StoreRefused(PlangateError):
    """The database answered but refused the work (a privilege, a timeout): no outage."""


class BrokerRefused(BrokerUnavailable):
    """The broker answers, but refuses plangate's settings (a login, a permission, a queue).

    Unusable as a stopped one until they are fixed, so it is handled as one: a goal stays in
    the outbox, a worker retries.
    """


class BrokerUnreadable(BrokerUnavailable):
    """The broker's port answers what plangate cannot read: not a broker, or not the URL's kind.

    Nothing but a change of PLANGATE_BROKER_URL helps; meanwhile it is handled as a broker
    away: a goal stays in the outbox, a worker retries.
    """

    reason = "the broker answers what plangate cannot read (is PLANGATE_BROKER_URL a broker?)"
    fix = "set PLANGATE_BROKER_URL to a Redis or RabbitMQ server's URL"


class ServerUnavailable(PlangateError):
    """`plangate serve` could not be reached or failed; the message says where and why."""


class PolicyError(PlangateError):
    """A policy file cannot be loaded or a rule does not compile."""

    def __init__(self, message: str, rule: str | None = None, line: int | None = None) -> None:
        self.rule = rule
        self.line = line
        if rule is None:  # about the file: `FILE is not valid YAML: ... (line 5)`
            super().__init__(f"{message} (line {line})" if line else message)
            return
        where = f"rule {rule!r}" + (f" (line {line})" if line else "")
        super().__init__(f"{where}: {message}")


class ApprovalInvalid(PlangateError):
    """An approval does not hold (bad signature, unknown key, wrong hash, expired, reused)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"approval refused: {reason}")


class UnknownSigner(ApprovalInvalid):
    """An approval signed by a key this process does not trust: its trusted keys may lack it."""

    def __init__(self, reason: str, key_ids: tuple[str, ...] = ()) -> None:
        """Refuse, naming the keys that signed (`key_ids`, shortened as the reason says them)."""
        super().__init__(reason)
        self.key_ids = key_ids


class ToolLoadError(PlangateError):
    """A tool module could not be imported or declares a tool wrongly."""


class ToolError(PlangateError):
    """A tool call failed; the step is marked failed with this message."""


class OutputUnusable(ToolError):
    """A tool ran, and what it returned cannot be kept: not JSON, or not its declared type.

    A read fails; a write took effect all the same, and succeeds without its output.
    """


class OutcomeUnknown(ToolError):
    """A call was cut off (a timeout, a dropped connection) after it may have taken effect.

    The step is marked `unknown`, not failed: its run waits for a person to settle it.
    """


class InputInvalid(PlangateError):
    """What a person or service sent does not fit; the message says what to change."""


def check_comment(text: str, what: str = "the comment") -> None:
    """Raise InputInvalid if a person's comment or reason cannot be recorded as written.

    Longer than any entry takes, or holding a NUL.

    Checked where it is recorded, so the CLI, the API and a library caller are bound alike.
    """
    from schemas.messages import MAX_COMMENT_CHARS

    if len(text) > MAX_COMMENT_CHARS:
        raise InputInvalid(
            f"{what} is {len(text)} characters long; the limit is {MAX_COMMENT_CHARS}: shorten it"
        )
    if "\x00" in text:
        # Kept with the decision, it became U+FFFD in the audit entry (PostgreSQL's text holds
        # none): two records of one comment disagreed.
        raise InputInvalid(f"{what} holds a NUL character, which no record keeps: take it out")


class GoalNotCompleted(PlangateError):
    """A goal ended without completing: failed, denied, rejected, expired or cancelled."""

    def __init__(self, goal_id: str, status: str, reason: str | None) -> None:
        self.goal_id, self.status, self.reason = goal_id, status, reason
        why = f": {reason}" if reason else ""
        super().__init__(
            f"goal {goal_id} was not completed, it is {status}{why}; "
            f"`plangate status {goal_id}` shows its steps and decision"
        )


class GoalWaiting(GoalNotCompleted):
    """A goal waits for a person: its plan is held for review, or a step needs attention."""

    def __init__(self, goal_id: str, status: str, reason: str | None) -> None:
        super().__init__(goal_id, status, reason)
        why = f" ({reason})" if reason else ""
        # Where a person acts on it: a held plan is reviewed, a step of unknown outcome settled.
        listed = (
            "`plangate review unsettled` lists the steps to settle"
            if status == "needs_attention"
            else "`plangate review list` shows held plans"
        )
        self.args = (
            f"goal {goal_id} waits for a person ({status}){why}; {listed}, and "
            "`result(wait_for_people=True)` waits for them",
        )


class NotFound(PlangateError):
    """A goal, plan or record asked for does not exist."""


class Conflict(PlangateError):
    """Someone else already decided or changed this; reload and try again."""


class GoalEnded(Conflict):
    """A goal waited for ended in another state, which nothing but an operator moves it from."""

    def __init__(
        self, goal_id: str, status: str, reason: str | None, awaited: Iterable[str]
    ) -> None:
        self.goal_id, self.status, self.reason = goal_id, status, reason
        self.awaited = frozenset(awaited)
        why = f": {reason}" if reason else ""
        super().__init__(
            f"goal {goal_id} is {status}{why}; it has ended, and will not become "
            f"{' or '.join(sorted(self.awaited))}: `plangate status {goal_id}` shows its steps "
            "and decision"
        )


class AlreadyApproved(Conflict):
    """The reviewer approved this revision already: a second approval counts for nothing."""


class AuditBroken(PlangateError):
    """The audit log holds an entry that cannot be read as recorded: it was altered."""


class Forbidden(PlangateError):
    """A reviewer lacks the role a policy rule requires to decide or edit this plan."""

    def __init__(self, message: str, role: str) -> None:
        self.role = role
        super().__init__(message)


class Reject(PlangateError):
    """Raised by a handler: this message can never be handled; dead-letter it with `reason`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Retry(PlangateError):
    """Raised by a handler: try this message again later (a passing failure)."""

    def __init__(self, reason: str, delay: float = 1.0) -> None:
        self.reason = reason
        self.delay = delay
        super().__init__(reason)


class HandBack(PlangateError):
    """Raised by a handler: its worker stops midway; the message goes back to the broker.

    Not a failure: no attempt is used and nothing is dead-lettered. What the handler did is
    recorded, and the worker that takes the message next goes on from there.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PlanningFailed(PlangateError):
    """No valid plan could be made for a goal; `reasons` says why, each a full sentence."""

    def __init__(self, reasons: list[str], *, model_server: bool = False) -> None:
        self.reasons = reasons
        self.model_server = model_server  # the model server failed, not the goal's planning
        super().__init__("; ".join(reasons))


class Unavailable(Retry):
    """Raised by a handler: a dependency (the database) is down; retry without using an attempt."""


class NotReady(Unavailable):
    """Raised by a handler: what it needs is not there yet; retry without using an attempt.

    Unlike an outage the store is up (no executor has published its tools yet, say): the retry
    is stored and its message acked, so waiting holds no slot.
    """


def describe(exc: ValidationError, model: type[BaseModel] | None = None, what: str = "") -> str:
    """Summarize a validation error in one line: each place and what is wrong there.

    Only places and messages, never the input (it may be a secret), and no links. Given
    `model`, an unknown key lists the known ones. `what` names an error with no place.
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or what
        if err["type"] == "extra_forbidden" and model is not None:
            allowed = ", ".join(_owner(model, err["loc"]).model_fields)
            parts.append(f'unknown key "{loc}" (known keys: {allowed})')
        else:
            said = own_words(err["msg"])
            parts.append(f"{loc}: {said}" if loc else said)
    return "; ".join(parts)


def own_words(message: str) -> str:
    """Return a validation message without pydantic's label: our own words need none."""
    return message.removeprefix("Value error, ")


def _owner(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """Return the model whose keys hold the last place of `loc`, followed from `model` down.

    (A top-level typo in a playbook file listed the keys of an entry as the known ones.)
    """
    from pydantic import BaseModel  # here: plangate.errors loads before pydantic is needed

    owner: Any = model
    for part in loc[:-1]:
        if isinstance(part, str) and isinstance(owner, type) and issubclass(owner, BaseModel):
            field = owner.model_fields.get(part)
            owner = field.annotation if field is not None else None
        while get_origin(owner) is not None:  # list[X], dict[str, X], X | None: go to X
            items = [a for a in get_args(owner) if a is not type(None)]
            owner = items[-1] if items else None
    return owner if isinstance(owner, type) and issubclass(owner, BaseModel) else model


# The most of a value given from outside that an error quotes back.
_QUOTED_CHARS = 80


def quoted(given: str) -> str:
    """Quote an id or name given from outside for an error: whole if short, its start if not.

    (An id of 20,000 characters came back whole in the 404 that refused it.)
    """
    if len(given) <= _QUOTED_CHARS:
        return repr(given)
    return f"{given[:_QUOTED_CHARS]!r}… ({len(given)} characters)"
