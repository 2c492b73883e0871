"""What a `Client`'s calls raise: plangate's errors, never a driver's."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from plangate.errors import ConfigError, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")


def said_as_plangate(call: Callable[P, R]) -> Callable[P, R]:
    """Raise StoreUnavailable for a database that does not answer, ConfigError once closed.

    A service catching PlangateError got SQLAlchemy's OperationalError through the outage, and
    the first call after a restart (a pooled connection the server had dropped). Work the
    database refused for now (a lock or statement timeout, every connection slot taken) is
    said in its words, with what to change if it lasts: it was "does not answer" too.
    """

    @functools.wraps(call)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        from plangate.store.engine import failure_cause, is_outage
        from plangate.store.sqlstates import refusal

        if getattr(args[0], "closed", False):  # the Client's own: its first argument
            raise ConfigError("this Client is closed; make another (or use it in a with block)")
        try:
            return call(*args, **kwargs)
        except SQLAlchemyError as exc:
            if not is_outage(exc):
                raise
            refused = refusal(exc)
            if refused is not None:
                raise StoreUnavailable(
                    f"the store refuses work for now: {refused.reason} ({failure_cause(exc)}); "
                    f"{refused.advice or 'call again'} (nothing was recorded by a call that "
                    "failed so; a submit with an idempotency key is safe to repeat)"
                ) from exc
            raise StoreUnavailable(
                f"the store does not answer ({failure_cause(exc)}): check that the database "
                "PLANGATE_DATABASE_URL names is up, then call again (nothing was recorded "
                "by a call that failed so; a submit with an idempotency key is safe to repeat)"
            ) from exc

    return guarded
