"""What PostgreSQL's error codes (SQLSTATE) say to do: wait a refusal out, or grant a privilege.

PostgreSQL refuses work it could do a moment later: every connection slot taken, a lock not
granted within `lock_timeout`, a statement over `statement_timeout`, a transaction that lost a
serialization conflict or a deadlock. `serve` answered those 500, a traceback logged at each;
they are a 503 to try again, as an outage is. A role without a privilege (`plangate db
upgrade` as a role that cannot create tables) was told to check PLANGATE_DATABASE_URL.
Imports nothing of the project: `engine` uses it.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Refusal(NamedTuple):
    """Work the database refused now and would likely do when tried again."""

    reason: str  # what happened, for anyone (an HTTP client too)
    advice: str  # what an operator changes if it lasts ("": nothing, it is the normal way)

    def __str__(self) -> str:
        return f"{self.reason}; {self.advice}" if self.advice else self.reason


# 53300 is every "too many connections": the server's, a role's, a database's.
_REFUSALS = {
    "53300": Refusal(
        "the database refuses new connections (too many connections)",
        "raise its max_connections, or run fewer plangate processes or a lower --concurrency "
        "(docs/how-to/deploy.md, Database connections, says how many each process takes)",
    ),
    "55P03": Refusal(
        "the database did not grant a lock in time (lock_timeout)",
        "another transaction held it; if this lasts, pg_locks shows which",
    ),
    "57014": Refusal(
        "the database cancelled a statement (statement_timeout, or an operator's cancel)",
        "if this lasts, raise statement_timeout or find what holds the database up",
    ),
    "40001": Refusal("the database rolled back a transaction that conflicted with another", ""),
    "40P01": Refusal("the database rolled back a transaction caught in a deadlock", ""),
}
# A connection refused gets no SQLSTATE from libpq: the server's words are all there is.
_TOO_MANY = re.compile(
    r"too many clients already|remaining connection slots are reserved|too many connections for"
)

INSUFFICIENT_PRIVILEGE = "42501"
OWNER_ADVICE = (
    "the role in PLANGATE_DATABASE_URL lacks that privilege: run `plangate db upgrade` as the "
    "database's owner; the workers and serve need only SELECT, INSERT, UPDATE, DELETE on its "
    "tables and USAGE, SELECT on its sequences (docs/how-to/deploy.md, PostgreSQL roles)"
)


def refused_role(cause: str) -> str:
    """Say in one line what privilege the database refused (`cause`: its words), what to grant."""
    return f"the store refused plangate's role: {cause}; {OWNER_ADVICE}"


# Refusals a statement may meet at every try: too slow for statement_timeout, or waiting on a
# lock another transaction keeps. Waited out as an outage, such a statement was tried for
# ever; it is tried again as a failure is, up to a message's attempts.
MAY_LAST = frozenset({"55P03", "57014"})


def lasting(error: BaseException, cause: str) -> str | None:
    """Say a refusal that every try may meet, and what to do; None for any other error.

    A privilege plangate's role lacks, a lock or statement timeout, in one line with the
    database's own words (`cause`).
    """
    code = sqlstate(error)
    if code == INSUFFICIENT_PRIVILEGE:
        return refused_role(cause)
    if code not in MAY_LAST:
        return None
    refused = _REFUSALS[code]
    return f"the store refused a statement: {refused.reason} ({cause}); {refused.advice}"


def sqlstate(error: BaseException) -> str | None:
    """Return the SQLSTATE of a database error (SQLAlchemy's or the driver's), else None."""
    driver = getattr(error, "orig", None) or error
    code = getattr(driver, "sqlstate", None)
    if code is None and _TOO_MANY.search(str(driver)):
        return "53300"
    return code if isinstance(code, str) else None


def refusal(error: BaseException) -> Refusal | None:
    """Return the refusal a database error is (too many connections, a lock), else None."""
    code = sqlstate(error)
    return None if code is None else _REFUSALS.get(code)


def what_to_do(error: BaseException) -> str:
    """Return what to do about a store that would not open: its SQLSTATE's advice, or checks."""
    if sqlstate(error) == INSUFFICIENT_PRIVILEGE:
        return OWNER_ADVICE
    return (
        "check PLANGATE_DATABASE_URL, and that the database is reachable and was made by plangate"
    )
