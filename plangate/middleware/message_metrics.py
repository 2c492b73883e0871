"""Prometheus counts of what a stage did with each message, and how long its handler took."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import cast, get_args

from typing_extensions import override

from plangate import metrics
from plangate.bus.envelope import Delivery
from plangate.bus.middleware import Middleware, Outcome
from plangate.bus.topology import STAGE_BINDINGS, Stage
from schemas import MESSAGE_MODELS, Message

# A type plangate does not know is counted as this: the label is a broker entry's routing key,
# which a publisher chooses, and each new one made two series that never went (a card with
# 300 entries, 600 series).
UNKNOWN_TYPE = "unknown"


def type_label(delivery: Delivery) -> str:
    """Return the message's type as a metric label: one of plangate's, else `unknown`."""
    kind = delivery.message_type
    return kind if kind in MESSAGE_MODELS else UNKNOWN_TYPE


class MessageMetrics(Middleware):
    """Time each handler call; count each message handled, retried or dead-lettered."""

    def __init__(self, stage: str) -> None:
        self._stage = stage
        # Each series there from the start, at 0: Prometheus' `increase` misses a series' first
        # sample, so a stage's first dead letter of a type (its series' first, at 1) alerted
        # nobody (deploy/prometheus/alerts.yml).
        for kind in STAGE_BINDINGS.get(cast(Stage, stage), ()):
            for outcome in get_args(Outcome):
                metrics.MESSAGES.labels(stage, kind, outcome)
        # And the dead letters of what no stage knows: a foreign publisher's junk is the one
        # type whose first dead letter (its series born at 1) went unseen.
        metrics.MESSAGES.labels(stage, UNKNOWN_TYPE, "dead_lettered")

    @override
    def handling(self, message: Message, delivery: Delivery) -> AbstractContextManager[None]:
        return metrics.HANDLER_SECONDS.labels(self._stage, type_label(delivery)).time()

    @override
    def after_settle(self, delivery: Delivery, outcome: Outcome) -> None:
        metrics.settled(self._stage, type_label(delivery), outcome)
