r"""Text from elsewhere made safe to show a person, on a terminal or a page.

Goal texts are anyone's, plan words an LLM's, tool outputs an outside system's. Printed as
they are, a control character in them is obeyed by the terminal: an escape sequence clears
the screen, retitles the window or rewrites what was shown above it; and on a terminal or a
page, a bidirectional override reorders what a reviewer reads (`EVIL\u202eEMCA` reads as
`EVILACME`) and a zero-width space hides in a name. Each such character is shown as its escape
instead (`\x1b`, `\u202e`); line breaks and tabs stay.
"""

from __future__ import annotations

import json
import re

# C0 controls but tab and line feed, DEL, C1 controls, Unicode's line and paragraph separators
# (a JSON log line holding one is two lines to `splitlines` and to JavaScript), its
# bidirectional controls, and the invisible ones (zero-width spaces and joiners, word joiner,
# BOM, soft hyphen): a secret or a name with one inside reads as the same text and is not.
_UNPRINTABLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


def printable(text: str) -> str:
    """Return `text` with every character a terminal would obey shown as its escape."""
    return _UNPRINTABLE.sub(_escaped, text)


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable_json(value: object) -> str:
    r"""Return `value` as indented JSON, each character `printable` escapes written as `\uXXXX`.

    For JSON a person edits (the review page's steps): it reads as `printable` shows text, and
    decodes to the same value. `printable`'s own `\xad` is no JSON escape, and an edit that
    kept one was refused as not JSON; escapes only appear inside JSON's strings here, as those
    characters do (JSON's whitespace is none of them).
    """
    return json_escaped(json.dumps(value, indent=2, ensure_ascii=False))


def json_escaped(text: str) -> str:
    r"""Return JSON text with each character `printable` escapes written as `\uXXXX`.

    The same JSON (it decodes to the same value), shown safely: a log line a person reads on
    a terminal, a document on a page.
    """
    return _UNPRINTABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def printable_line(text: str) -> str:
    """Return `text` as `printable` does, its line breaks and tabs escaped too.

    For one row of a listing, where a line break in a field forges a row below it.
    """
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def undecodable_at(text: str) -> int | None:
    """Return where `text` holds a byte Python could not decode (U+DC80-U+DCFF), if it does.

    That is how a command line's bytes that are no UTF-8 arrive (`surrogateescape`).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        undecoded = [i for i in range(exc.start, exc.end) if "\udc80" <= text[i] <= "\udcff"]
        return undecoded[0] if undecoded else None
    return None
