"""The kill tests' fault points in the consume loop (`plangate.faults`; inert in production)."""

from __future__ import annotations

from typing_extensions import override

from plangate import faults
from plangate.bus.envelope import Delivery
from plangate.bus.middleware import Middleware


class FaultInjection(Middleware):
    """Die, when a test asks, after a message is received, committed or published."""

    @override
    def after_receive(self, delivery: Delivery) -> None:
        faults.trip("after_receive")

    @override
    def after_handler(self, delivery: Delivery) -> None:
        faults.trip("after_commit")

    @override
    def before_ack(self, delivery: Delivery) -> None:
        faults.trip("after_publish")
