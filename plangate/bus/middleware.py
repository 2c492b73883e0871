"""The consume loop's seam: what is done around each message, kept out of the loop.

As dramatiq's middleware (`before_process_message`, `after_process_message`, ...): the loop
calls each hook at its moment, and a concern (tracing, metrics, log fields, fault injection,
outage mapping) is one class in its own module (`plangate.middleware`) that overrides the
hooks it needs. The loop itself only receives, hands to the pool, settles and acks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Literal

from typing_extensions import override

from plangate.bus.envelope import Delivery
from schemas import Message

Outcome = Literal["handled", "retried", "dead_lettered", "handed_back"]


class Middleware:
    """Hooks around each message a stage consumer takes; each does nothing unless overridden.

    `handling` runs in the handler's thread; the others where their comment says. A hook must
    not fail: what it raises is the message's failure (or, in the loop's thread, an outage).
    """

    def after_receive(self, delivery: Delivery) -> None:
        """In the loop's thread: a message was decoded and goes to a handler next."""

    def handling(self, message: Message, delivery: Delivery) -> AbstractContextManager[None]:
        """Return the context the handler runs in (a span, log fields, a timer, error mapping).

        An exception the handler raises passes through it, innermost first, and may be
        replaced there (as an outage becomes `Unavailable`).
        """
        return nullcontext()

    def after_handler(self, delivery: Delivery) -> None:
        """In the handler's thread: the handler returned and committed; publishing is next."""

    def before_ack(self, delivery: Delivery) -> None:
        """In the loop's thread: a message's results are published; it is acked next."""

    def after_settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """In the loop's thread: a message was handled, set to be retried or dead-lettered."""


class MiddlewareStack(Middleware):
    """Several middlewares as one: hooks run in order; the first one's context is outermost."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = tuple(middleware)

    @override
    def after_receive(self, delivery: Delivery) -> None:
        for each in self.middleware:
            each.after_receive(delivery)

    @contextmanager
    def _nested(self, message: Message, delivery: Delivery) -> Iterator[None]:
        with ExitStack() as stack:
            for each in self.middleware:
                stack.enter_context(each.handling(message, delivery))
            yield

    @override
    def handling(self, message: Message, delivery: Delivery) -> AbstractContextManager[None]:
        return self._nested(message, delivery)

    @override
    def after_handler(self, delivery: Delivery) -> None:
        for each in self.middleware:
            each.after_handler(delivery)

    @override
    def before_ack(self, delivery: Delivery) -> None:
        for each in self.middleware:
            each.before_ack(delivery)

    @override
    def after_settle(self, delivery: Delivery, outcome: Outcome) -> None:
        for each in self.middleware:
            each.after_settle(delivery, outcome)
