"""A write tool that cannot tell whether it acted: a bank API that timed out after sending."""

from __future__ import annotations

from plangate.errors import OutcomeUnknown
from plangate.tools import tool


@tool(effect="write")
def wire_money(amount: int) -> str:
    """Send a wire, through a bank API that can time out after accepting it."""
    raise OutcomeUnknown("the bank did not answer within 30 s")
