"""A database outage inside a handler is something to wait out, never a dead letter.

A refusal the database answers, and may answer at every try, is no outage: a privilege
plangate's role lacks, a statement past statement_timeout, a lock not granted within
lock_timeout. It fails the message as any failure does (tried again, then dead-lettered), said
in one line with what to do. A privilege's was SQLAlchemy's error whole (the statement and its
parameters) and a traceback, with no advice; a timeout's was waited out for ever.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from typing_extensions import override

from plangate.bus.envelope import Delivery
from plangate.bus.middleware import Middleware
from plangate.errors import StoreRefused, Unavailable
from plangate.store.engine import failure_cause, is_outage
from plangate.store.sqlstates import lasting
from schemas import Message


class DatabaseOutages(Middleware):
    """Turn an error that says the database is unreachable into `Unavailable`.

    The consumer then holds the message and tries again with backoff, using no attempt.
    Innermost, so that the span and the metrics see the outage as such.
    """

    @override
    def handling(self, message: Message, delivery: Delivery) -> AbstractContextManager[None]:
        return _mapped()


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        refused = lasting(exc, failure_cause(exc))
        if refused is not None:
            raise StoreRefused(refused) from exc
        if is_outage(exc):
            # Its cause said: "database or disk is full" is not waited out as a lost link is.
            raise Unavailable(f"the database is unavailable: {failure_cause(exc)}") from exc
        raise
