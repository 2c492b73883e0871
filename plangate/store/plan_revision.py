"""A plan revision's identity: what deciding on it needs, read without loading its row.

The gate decides every proposed revision. It checks the stored hash against the message's and
records, signs and emits by the revision's ids; it holds the plan itself from the message. So
its hot path reads four columns with one plain statement: loading the ORM row (its JSON body
decoded, the row tracked by the session) cost about four times as much. A stored `PlanRow`
has the same four attributes, so the functions that take a revision take either.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from plangate.store.hot_statements import HotStatement
from plangate.store.models import PlanRow


class PlanRevision(Protocol):
    """A stored plan revision, by its ids and hash (a `PlanRow` or a `StoredRevision`)."""

    @property
    def plan_id(self) -> str:
        """The revision's own id."""
        ...

    @property
    def goal_id(self) -> str:
        """The goal it plans for."""
        ...

    @property
    def revision(self) -> int:
        """Its number among the goal's revisions, from 1."""
        ...

    @property
    def plan_hash(self) -> str:
        """The hash of the plan as proposed."""
        ...


class StoredRevision(NamedTuple):
    """The ids and hash of a stored revision, as `read_revision` reads them."""

    plan_id: str
    goal_id: str
    revision: int
    plan_hash: str


_PLANS = cast(Table, PlanRow.__table__)
_REVISION = HotStatement(
    select(_PLANS.c.plan_id, _PLANS.c.goal_id, _PLANS.c.revision, _PLANS.c.plan_hash).where(
        _PLANS.c.plan_id == bindparam("plan_id")
    )
)


def read_revision(session: Session, plan_id: str) -> StoredRevision | None:
    """Return a stored revision's ids and hash, or None if no such plan is stored."""
    row = _REVISION.first(session, {"plan_id": plan_id})
    return StoredRevision(*row) if row is not None else None
