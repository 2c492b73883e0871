"""Tools for the chaos test: a read, and a write that counts its effects by idempotency key.

The write appends one line per effect to `CHAOS_EFFECTS`; a call whose key already has a line
is a suppressed duplicate (as a real integration deduplicates) and goes to `CHAOS_DUPLICATES`.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from plangate.tools import ToolContext, tool


@tool(effect="read", idempotent=True)
def chaos_read(number: int) -> int:
    """Return the number it is given."""
    return number


@tool(effect="write", idempotent=True)
def chaos_write(number: int, context: ToolContext) -> str:
    """Record one effect per idempotency key; later calls with the key are duplicates."""
    effects = Path(os.environ["CHAOS_EFFECTS"])
    with open(effects.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seen = effects.read_text().splitlines() if effects.exists() else []
        keys = {json.loads(line)["key"] for line in seen}
        target = (
            Path(os.environ["CHAOS_DUPLICATES"]) if context.idempotency_key in keys else effects
        )
        with open(target, "a") as file:
            line = {"key": context.idempotency_key, "goal_id": context.goal_id, "n": number}
            file.write(json.dumps(line) + "\n")
            file.flush()
            os.fsync(file.fileno())
    return context.idempotency_key


@tool(effect="write", idempotent=False)
def charge_card(amount: int, context: ToolContext) -> str:
    """Record a charge: not idempotent, so it must never run twice for one step."""
    effects = Path(os.environ["CHAOS_EFFECTS"])
    with open(effects, "a") as file:
        file.write(json.dumps({"key": context.idempotency_key, "goal_id": context.goal_id}) + "\n")
        file.flush()
        os.fsync(file.fileno())
    return "charged"
