"""How much of what a tool hands back plangate keeps: its output, its error text, a preview.

A tool's output is stored with its step, carried by `step.finished` and read by `when`
conditions; a remote server decides what it is (an MCP server may echo whatever it is sent).
Unbounded, one call could fill the store, make a message every observer refuses (the decoder's
limit is `MAX_MESSAGE_BYTES`) and hold the store's write lock while a condition reads it. So an
output over `MAX_OUTPUT_BYTES` of JSON is not kept: a read fails (nothing happened, and the
message says what to do), a write succeeds without its output (it took effect; failing it
would invite running it again).
"""

from __future__ import annotations

import json
from typing import Any

from plangate.redaction import redact
from schemas.decoding import MAX_MESSAGE_BYTES

MAX_OUTPUT_BYTES = 256 * 1024
"""The most JSON a tool's output may take (UTF-8), so that a `step.finished` always fits."""
MAX_ERROR_CHARS = 2000
"""The most of a tool's error text that is kept: enough to say what went wrong."""
PREVIEW_CHARS = 8000
"""The most of a write's preview text that is kept (what it would do, for a reviewer)."""
PREVIEW_BUDGET_BYTES = MAX_MESSAGE_BYTES // 2
"""The most JSON a preview's outputs and arguments take together, so `plan.previewed` fits."""
_SCANNED_CHARS = 64 * 1024  # of an error text, redacted before it is cut to MAX_ERROR_CHARS


def json_size(value: Any) -> int:
    """Return the bytes of `value` as compact UTF-8 JSON (what the store and messages hold)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode())


def output_problem(tool: str, output: Any) -> str | None:
    """Say why `tool`'s output cannot be kept (too large, or text no store holds), or None.

    A lone surrogate (U+D800 with no pair) is no UTF-8: measuring it raised, the handler failed on
    every try, and the goal stayed running while each resend became a dead letter.
    """
    try:
        size = json_size(output)
    except UnicodeEncodeError:
        return (
            f"tool {tool} returned text that is not Unicode (a lone surrogate), which "
            "cannot be stored: return text a JSON encoder can write as UTF-8"
        )
    return oversize_note(tool, size) if size > MAX_OUTPUT_BYTES else None


def oversize_note(tool: str, size: int) -> str:
    """Say that `tool`'s output of `size` bytes is over the limit, and what to do instead."""
    return (
        f"tool {tool} returned {size} bytes of output; the limit is {MAX_OUTPUT_BYTES}: "
        "return less (a page, a summary) or a reference to the data (a URL, a file id)"
    )


def kept_error(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Return a tool's text (an error, a preview) redacted, cut to `limit` saying how much more.

    Only the start of a huge text is redacted (a server may echo megabytes): what is kept lies
    well inside it.
    """
    head = redact(text[:_SCANNED_CHARS])
    if len(head) <= limit and len(text) <= _SCANNED_CHARS:
        return head
    # Counted on the redacted start (a secret's mark may be longer than the secret) and the
    # raw rest.
    rest = len(head) - limit + max(0, len(text) - _SCANNED_CHARS)
    return f"{head[:limit]}… ({rest} more characters not kept)"
