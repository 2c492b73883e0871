"""Prometheus counts of what a stage did with each message, and how long its handler took."""

from __future__ import annotations

from contextlib import AbstractContextManager

from typing_extensions import override

from plangate import metrics
from plangate.bus.envelope import Delivery
from plangate.bus.middleware import Middleware, Outcome
from schemas import Message


class MessageMetrics(Middleware):
    """Time each handler call; count each message handled, retried or dead-lettered."""

    def __init__(self, stage: str) -> None:
        self._stage = stage

    @override
    def handling(self, message: Message, delivery: Delivery) -> AbstractContextManager[None]:
        return metrics.HANDLER_SECONDS.labels(self._stage, delivery.message_type).time()

    @override
    def after_settle(self, delivery: Delivery, outcome: Outcome) -> None:
        metrics.settled(self._stage, delivery.message_type, outcome)
