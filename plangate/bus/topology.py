"""The one place that builds plangate's kombu topology.

One durable topic exchange; one durable queue per stage bound to the message types that stage
handles (plus its own retry key); the dead-letter queue bound to `dead.#`; and, per observer,
an exclusive auto-deleted queue bound to everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kombu.entity import Exchange, Queue, binding

Stage = Literal["planner", "gate", "executor"]
STAGES: tuple[Stage, ...] = ("planner", "gate", "executor")

STAGE_BINDINGS: dict[Stage, tuple[str, ...]] = {
    # Feedback makes new revisions: a rejection (and, if PLANGATE_REPLAN_ON_FAILURE is set, a
    # failed run; bound always, since a durable queue keeps its bindings across restarts).
    "planner": ("goal.submitted", "plan.rejected", "execution.failed"),
    # A person's approval comes to the gate, the only holder of the signing key, to be signed.
    "gate": ("plan.proposed", "review.decided"),
    "executor": ("plan.approved", "plan.preview_requested"),
}


@dataclass(frozen=True)
class Topology:
    """Names and kombu objects for one namespace (default `plangate`)."""

    namespace: str = "plangate"

    @property
    def exchange(self) -> Exchange:
        """The topic exchange every message is published to."""
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
        return f"retry.{stage}"

    @staticmethod
    def dead_key(queue: str) -> str:
        """Return the routing key of a dead letter from `queue`."""
        return f"dead.{queue}"

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
            self.dead_letter_queue_name, exchange=self.exchange, routing_key="dead.#", durable=True
        )

    def observer_queue(self, name: str) -> Queue:
        """Return an observer's own queue: a copy of every message, deleted when it leaves."""
        return Queue(
            f"{self.namespace}.events.{name}",
            exchange=self.exchange,
            routing_key="#",
            durable=False,
            auto_delete=True,
        )

    def durable_queues(self) -> list[Queue]:
        """Return every queue that must exist before the first message is published."""
        return [*(self.stage_queue(stage) for stage in STAGES), self.dead_letter_queue()]
