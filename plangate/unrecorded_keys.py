"""The keys a write claimed before revision 0015 may have been called with: its row keeps none.

Since 0015 a write's claim records the idempotency key its tool gets, and every reader takes
that one. A write claimed before (in doubt across the upgrade: its executor died mid-call) has
no key on record, and the releases made it with four formulas in turn. Which release called it,
the database cannot say, so the person settling it is given each key another release would
have passed, and which releases made it: the other system knows the call by one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plangate.step_calls import idempotency_key, key_of
from schemas import Step
from schemas.hashing import sha256_hex


@dataclass(frozen=True)
class CandidateKey:
    """A key a write claimed before 0015 may have been called with, and the releases making it."""

    key: str
    made_by: str


def candidate_keys(
    plan_hash: str, goal_id: str, step: Step, args: dict[str, Any]
) -> tuple[CandidateKey, ...]:
    """Return the distinct keys the releases before 0015 could have called `step` with.

    `args` are the arguments it is called with (references filled in). This release's key is
    last: it is the one the call made again gets, once settled as not happened.
    """
    # Releases are named by their commit: the formula changed within schema 0014.
    made = [
        (_hashed(f"{plan_hash}/{step.id}"), "releases before 060cb95 (all at 0013 or older)"),
        # The arguments as planned, references not filled in.
        (key_of([goal_id, step.id, step.tool, step.args]), "releases 060cb95 to 65bb2e2"),
        # A whole-number float (10.0) not yet keyed as the integer it equals (10).
        (key_of([goal_id, step.id, step.tool, args]), "releases 65bb2e2 to 370429d"),
        (idempotency_key(goal_id, step, args), "releases since 370429d, this one too"),
    ]
    by_key: dict[str, list[str]] = {}  # in order: this release's key, the last made, stays last
    for key, who in made:
        by_key.setdefault(key, []).append(who)
    return tuple(CandidateKey(key, "; ".join(who)) for key, who in by_key.items())


def _hashed(text: str) -> str:
    return sha256_hex(text.encode())[:40]
