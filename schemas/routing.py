"""Where every message goes: the one routing table of plangate's bus.

For each message type: who sends it, which stage queues receive it, and whether it ends the
goal. The routing key of a message on the topic exchange is its type. Everything that routes
is derived from here: the kombu topology (`plangate.bus.topology`), the observers' bindings,
the AsyncAPI document, the exported JSON Schemas and the reconciler's idea of which stage a
goal's last message waits in. `check_routes` says when a message model has no route.

Pure data: strings only, no model and nothing of the rest of the project.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from schemas.errors import PlangateError

Stage = Literal["planner", "gate", "executor"]
STAGES: tuple[Stage, ...] = ("planner", "gate", "executor")
Sender = Literal["planner", "gate", "executor", "external", "person", "operator"]
"""Who publishes a message: a stage; a service outside plangate; a reviewer; an operator."""

DEAD_LETTER_TYPE = "dead.letter"
"""The type of a dead letter's body (`schemas.messages.DeadLetter`), on `dead.<queue>` keys."""
DEAD_LETTER_BINDING = "dead.#"
"""What the dead-letter queue is bound to: the dead letters of every queue."""


@dataclass(frozen=True)
class Route:
    """One message type's way through the bus."""

    type: str
    sent_by: tuple[Sender, ...]
    consumed_by: tuple[Stage, ...] = ()  # none: only observers (and the store) see it
    terminal: bool = False  # the goal has ended once this is sent (unless asked to re-plan)

    @property
    def routing_key(self) -> str:
        """The key it is published with: its type (retries and dead letters have their own)."""
        return self.type


_TABLE = (
    # An operator's retry sends a failed, expired or unplannable goal back to the planner.
    Route("goal.submitted", ("external", "operator"), ("planner",)),
    # A person's edit of a held plan is a new revision for the gate, as the planner's are.
    Route("plan.proposed", ("planner", "person"), ("gate",)),
    Route("plan.failed", ("planner",), terminal=True),
    Route("plan.held", ("gate",)),
    Route("plan.denied", ("gate",), terminal=True),
    # Feedback: the planner may make a new revision. The gate sends one again on redelivery.
    Route("plan.rejected", ("person", "gate"), ("planner",), terminal=True),
    Route("plan.expired", ("gate",), terminal=True),
    # A person's settling of a paused run resumes it with the plan's own approval.
    Route("plan.approved", ("gate", "person"), ("executor",)),
    # To the gate, the only holder of the signing key, to be checked and signed.
    Route("review.decided", ("person",), ("gate",)),
    Route("plan.preview_requested", ("gate",), ("executor",)),
    Route("plan.previewed", ("executor",)),
    Route("step.finished", ("executor",)),
    Route("execution.completed", ("executor",), terminal=True),
    # Bound to the planner always (re-planning on failure is a setting; a durable queue keeps
    # its bindings across restarts, so the binding cannot follow the setting).
    Route("execution.failed", ("executor",), ("planner",), terminal=True),
    # An operator's decision, not a failure: nothing plans the goal again, so no stage takes it.
    Route("execution.cancelled", ("executor",), terminal=True),
    Route("execution.paused", ("executor",)),
)

ROUTES: Mapping[str, Route] = {route.type: route for route in _TABLE}
"""Message type (= routing key) to its route."""


class RoutesIncomplete(PlangateError):
    """A message model and the routing table disagree: a type without a route, or the reverse."""

    def __init__(self, unrouted: Collection[str], unmodelled: Collection[str]) -> None:
        parts = []
        if unrouted:
            parts.append(
                f"message type(s) {', '.join(sorted(unrouted))} have a model but no route: "
                "add a Route to schemas/routing.py saying who sends each, which stages "
                "consume it and whether it ends the goal"
            )
        if unmodelled:
            parts.append(
                f"route(s) {', '.join(sorted(unmodelled))} have no model: add the model to "
                "MESSAGE_MODELS in schemas/messages.py, or remove the route"
            )
        super().__init__("; ".join(parts))
        self.unrouted, self.unmodelled = frozenset(unrouted), frozenset(unmodelled)


def check_routes(message_types: Collection[str], routes: Mapping[str, Route] = ROUTES) -> None:
    """Refuse (RoutesIncomplete) unless every message type has a route and every route a type.

    Also refuses a routing key that would be taken for a retry, a dead letter or a pattern.
    """
    unrouted = set(message_types) - set(routes)
    unmodelled = set(routes) - set(message_types)
    if unrouted or unmodelled:
        raise RoutesIncomplete(unrouted, unmodelled)
    for key in routes:
        if key.startswith(("retry.", "dead.")) or "*" in key or "#" in key:
            raise PlangateError(f"routing key {key!r} is reserved or a pattern; choose another")


def types_consumed_by(stage: Stage, routes: Mapping[str, Route] = ROUTES) -> tuple[str, ...]:
    """Return the routing keys a stage's queue is bound to (besides its retry key)."""
    return tuple(route.routing_key for route in routes.values() if stage in route.consumed_by)


def stage_bindings(routes: Mapping[str, Route] = ROUTES) -> dict[Stage, tuple[str, ...]]:
    """Return each stage's routing keys, as its durable queue is bound."""
    return {stage: types_consumed_by(stage, routes) for stage in STAGES}


def consuming_stage(message_type: str) -> Stage:
    """Return the one stage whose queue a message waits in; ValueError if not exactly one."""
    stages = ROUTES[message_type].consumed_by
    if len(stages) != 1:
        raise ValueError(f"{message_type} is consumed by {len(stages)} stages, not one")
    return stages[0]


def observed_keys(routes: Mapping[str, Route] = ROUTES) -> tuple[str, ...]:
    """Return what an observer is bound to: every message type, no retry copy, no dead letter."""
    return tuple(route.routing_key for route in routes.values())


TERMINAL_TYPES: frozenset[str] = frozenset(t for t, route in ROUTES.items() if route.terminal)
"""Message types after which nothing more happens to the goal, unless it is re-planned."""


def retry_key(stage: Stage) -> str:
    """Return the routing key that sends a message back to one stage only."""
    return f"retry.{stage}"


def dead_key(queue: str) -> str:
    """Return the routing key of a dead letter from `queue`."""
    return f"dead.{queue}"
