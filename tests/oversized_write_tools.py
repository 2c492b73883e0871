"""A write that takes effect, then answers with more than plangate keeps of a tool's output.

Loaded by `plangate run --tools tests.oversized_write_tools` in the tests of what a run and
`plangate status` show of it, and imported by the store-level tests of the output bound.
"""

from __future__ import annotations

from executor_worker.output_bounds import MAX_OUTPUT_BYTES
from plangate.tools import tool

TOO_BIG = "x" * (MAX_OUTPUT_BYTES + 1)


@tool(effect="write", idempotent=True)
def huge_write() -> str:
    """Take effect, then answer with more than plangate keeps."""
    return TOO_BIG
