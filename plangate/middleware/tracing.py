"""Each handled message is a consumer span in the trace its headers carry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from typing_extensions import override

from plangate import telemetry
from plangate.bus.envelope import Delivery
from plangate.bus.middleware import Middleware
from schemas import Message


class Tracing(Middleware):
    """Open a `process <routing key>` span around the handler, continuing the sender's trace."""

    @override
    def handling(self, message: Message, delivery: Delivery) -> AbstractContextManager[None]:
        return self._span(delivery)

    @contextmanager
    def _span(self, delivery: Delivery) -> Iterator[None]:
        with telemetry.consumer_span(delivery.queue, delivery.routing_key, delivery.headers):
            yield
