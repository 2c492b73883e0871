"""What PostgreSQL's error codes (SQLSTATE) say to do: grant a privilege, or use the owner.

A role without a privilege (`plangate db upgrade` as a role that cannot create tables) was
told to check PLANGATE_DATABASE_URL. Imports nothing of the project: `engine` uses it.
"""

from __future__ import annotations

INSUFFICIENT_PRIVILEGE = "42501"
OWNER_ADVICE = (
    "the role in PLANGATE_DATABASE_URL lacks that privilege: run `plangate db upgrade` as the "
    "database's owner; the workers and serve need only SELECT, INSERT, UPDATE, DELETE on its "
    "tables and USAGE, SELECT on its sequences (docs/how-to/deploy.md, PostgreSQL roles)"
)


def sqlstate(error: BaseException) -> str | None:
    """Return the SQLSTATE of a database error (SQLAlchemy's or the driver's), else None."""
    code = getattr(getattr(error, "orig", None) or error, "sqlstate", None)
    return code if isinstance(code, str) else None


def what_to_do(error: BaseException) -> str:
    """Return what to do about a store that would not open: its SQLSTATE's advice, or checks."""
    if sqlstate(error) == INSUFFICIENT_PRIVILEGE:
        return OWNER_ADVICE
    return (
        "check PLANGATE_DATABASE_URL, and that the database is reachable and was made by plangate"
    )
