"""A step claimed by another run whose lease has not run out: when to come back for it."""

from __future__ import annotations

from datetime import datetime

from plangate.errors import Retry


def held_elsewhere(step_id: str, lease_until: datetime, now: datetime) -> Retry:
    """Come back when the other executor's lease runs out (it may have died: then take over).

    Not sooner: each retry spends one of the message's attempts, and a message that a dead
    executor held comes back long before its lease ends (`plangate.bus.redis_claims`).
    """
    wait = max(1.0, (lease_until - now).total_seconds() + 0.1)
    # Whose claim it is, the row does not say: another executor's, or a run of this one that
    # stopped before recording its result (a crash, an outage outlasting the lease).
    until = f"{lease_until:%H:%M:%S} UTC"
    said = f"step {step_id!r} is claimed by a run until {until}, not recorded yet"
    return Retry(said, delay=wait)
