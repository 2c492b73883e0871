"""The ids that name goals, plans, messages and approvals, as every message carries them.

An id is printed in tables and logs, put in URLs and compared byte for byte, and a foreign
publisher chooses its goal's. So besides its length it is one word of printable characters:
no space or line break to break a table's row or a log line, no control character for a
terminal to obey, no bidirectional override to reorder what a reviewer reads, and none of
`/ ? # %` or a backslash, which would make a URL name something else (`/goals/a?b` is `a`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_ID_LENGTH = 64
# Written so that Rust's regex (pydantic), Python's `re` and ECMA-262 (JSON Schema) read it
# alike: whitespace, URL delimiters, C0 and C1 controls, DEL and Unicode's bidirectional
# controls are refused. (Invisible characters, `a\u200bb`, are shown escaped wherever an id is
# printed; refusing them here would fail every message rebuilt from a goal stored with one.)
ID_PATTERN = r"^[^\s/?#%\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+$"

Identifier = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=ID_PATTERN,
        description="One word of printable characters, at most 64, none of / ? # % or a backslash.",
    ),
]
