"""The one place that builds plangate's kombu topology, from the routing table.

One durable topic exchange; one durable queue per stage bound to the message types that stage
consumes (plus its own retry key); the dead-letter queue bound to `dead.#`; and, per observer,
an exclusive auto-deleted queue bound to every message type. What is bound where comes from
`schemas.routing`; only the kombu objects are made here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property

from kombu.entity import Exchange, Queue, binding

from schemas.messages import MESSAGE_MODELS
from schemas.routing import (
    DEAD_LETTER_BINDING,
    ROUTES,
    STAGES,
    Stage,
    check_routes,
    dead_key,
    observed_keys,
    retry_key,
    stage_bindings,
)

__all__ = ["STAGES", "STAGE_BINDINGS", "Stage", "Topology"]

# A model without a route is bound nowhere: no stage would receive it and no observer see it,
# so no worker starts with one.
check_routes(MESSAGE_MODELS)
STAGE_BINDINGS: dict[Stage, tuple[str, ...]] = stage_bindings()
"""The message types each stage's queue is bound to, as `schemas.routing.ROUTES` says."""


@dataclass(frozen=True)
class Topology:
    """Names and kombu objects for one namespace (default `plangate`)."""

    namespace: str = "plangate"

    @cached_property
    def exchange(self) -> Exchange:
        """The topic exchange every message is published to (kombu binds a copy to a channel)."""
        return Exchange(self.namespace, type="topic", durable=True)

    def queue_name(self, stage: Stage) -> str:
        """Return the durable queue name of a stage, e.g. `plangate.planner`."""
        return f"{self.namespace}.{stage}"

    @property
    def dead_letter_queue_name(self) -> str:
        """Return the dead-letter queue's name."""
        return f"{self.namespace}.dead"

    @staticmethod
    def retry_key(stage: Stage) -> str:
        """Return the routing key that sends a message back to one stage only."""
        return retry_key(stage)

    @staticmethod
    def dead_key(queue: str) -> str:
        """Return the routing key of a dead letter from `queue`."""
        return dead_key(queue)

    def stage_queue(self, stage: Stage) -> Queue:
        """Return a stage's queue, bound to its message types and its retry key."""
        keys = (*STAGE_BINDINGS[stage], self.retry_key(stage))
        return Queue(
            self.queue_name(stage),
            exchange=self.exchange,
            bindings=[binding(self.exchange, routing_key=key) for key in keys],
            durable=True,
        )

    def dead_letter_queue(self) -> Queue:
        """Return the dead-letter queue, bound to every `dead.*` key."""
        return Queue(
            self.dead_letter_queue_name,
            exchange=self.exchange,
            routing_key=DEAD_LETTER_BINDING,
            durable=True,
        )

    def observer_queue(self, name: str, types: Collection[str] | None = None) -> Queue:
        """Return an observer's own queue: a copy of every message, deleted when it leaves.

        Bound to each message type (or to `types` only), not to `#`: retry copies are not news,
        and dead letters are read from their own queue.
        """
        keys = observed_keys()
        if types is not None:
            if isinstance(types, str) or not types:
                raise ValueError("types: give a collection of one message type or more")
            unknown = sorted(set(types) - set(ROUTES))
            if unknown:
                raise ValueError(f"no message has the type {', '.join(unknown)}: see ROUTES")
            keys = tuple(ROUTES[message_type].routing_key for message_type in sorted(types))
        return Queue(
            f"{self.namespace}.events.{name}",
            exchange=self.exchange,
            bindings=[binding(self.exchange, routing_key=key) for key in keys],
            durable=False,
            auto_delete=True,
        )

    def durable_queues(self) -> list[Queue]:
        """Return every queue that must exist before the first message is published."""
        return [*(self.stage_queue(stage) for stage in STAGES), self.dead_letter_queue()]
